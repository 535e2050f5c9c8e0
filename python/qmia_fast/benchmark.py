"""What `qmia-fast bench` measures: SecMI's t-error in a plain-PyTorch loop against qmia-fast's scorer, in one process.

Nothing here asserts a timing: it measures, records the conditions (threads, load, devices,
backend settings) and reports ratios measured in the same run on the same model and
images. Harnesses that only bench/ uses (kernel profiles, the precision table, the GPU
check, quantile-bag timing) live in bench/.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError
from .precision import PRECISIONS, call_precisions, resolve_precision

MODEL_NAMES = ("demo", "cifar10")
# What each device times when no variants are named: the precisions a user can pick there,
# and on CUDA the fused GroupNorm path on and off (FUSED_BY_DEFAULT["cuda"] waits on it).
DEFAULT_VARIANTS = {"cpu": ("auto", "fp32", "bf16"),
                    "cuda": ("auto", "fp16:fused", "fp16:unfused", "tf32", "mixed", "mixed-tf32", "fp32", "bf16")}
# --accuracy runs a whole audit per variant, so it compares fewer by default.
ACCURACY_VARIANTS = {"cpu": ("auto", "bf16"), "cuda": ("auto",)}
FUSED_SUFFIXES = {"fused": True, "unfused": False}
# PyTorch's shipped settings, which the baseline runs with on CUDA as a user's loop would:
# cuDNN may use TF32 for convolutions, matrix multiplies stay float32.
TORCH_DEFAULT_TF32 = {"cudnn": True, "matmul": False}


@dataclass
class BenchOptions:
    """What to measure; the defaults are the full run, `quick_defaults()` a few-minute one."""

    models: Sequence[str] = ("demo", "cifar10")
    batch_sizes: dict = field(default_factory=lambda: {"demo": [16, 32, 64, 128, 256, 512, 1024],
                                                         "cifar10": [16, 32]})
    precisions: Sequence[str] | None = None  # variant specs (parse_variant); None: DEFAULT_VARIANTS of the device
    direct_layers: bool = True  # also time fp32 without the Winograd/GroupNorm CPU layers (CPU only)
    slow_bf16: bool = False     # time bf16 on the CIFAR-10 model even where the CPU emulates bf16
    device: str = "cpu"
    threads: int | None = None
    rounds: int = 3            # timed rounds per case; each round times the baselines and every variant once
    batches_per_job: int | None = None  # batches per timed job; None: 1 on a CPU, 4 on a GPU (overlap shows)
    t_sec: int = 100
    k: int = 10
    vote: bool = True
    matmul: bool = True
    quick: bool = False

    @classmethod
    def quick_defaults(cls, **overrides) -> "BenchOptions":
        options = cls(batch_sizes={"demo": [32], "cifar10": [16]}, rounds=2, quick=True)
        for key, value in overrides.items():
            setattr(options, key, value)
        return options


def parse_variant(spec: str) -> dict:
    """Scorer keyword arguments of a variant: 'fp16' (the device decides fusion), 'fp16:fused' or 'fp16:unfused'."""
    precision, colon, suffix = str(spec).strip().partition(":")
    if precision not in PRECISIONS or (colon and suffix not in FUSED_SUFFIXES):
        raise ConfigError(f"variant {spec!r} is not understood; write a precision ({', '.join(PRECISIONS)}), "
                          "optionally followed by :fused or :unfused")
    return {"precision": precision, **({"fused": FUSED_SUFFIXES[suffix]} if suffix else {})}


# ---------------------------------------------------------------------------- models

def build_model(name: str, device: torch.device | str = "cpu"):
    """(EpsModel, description) for a benchmark model name: 'demo' or 'cifar10'.

    'demo' is the shipped, trained demo target; 'cifar10' is the 35.7M-parameter CIFAR-10
    DDPM architecture with random weights (throughput does not depend on their values).
    """
    from .models import BUILTIN_TARGET_DIR, CIFAR10_UNET_CONFIG, EpsModel, UNet, count_parameters, load_model
    from .schedule import linear_schedule

    if name == "demo":
        if not (BUILTIN_TARGET_DIR / "config.json").is_file():
            raise ConfigError(f"the demo benchmark model is the shipped target, missing from {BUILTIN_TARGET_DIR}; "
                              "reinstall qmia-fast or use --models cifar10")
        model, weights = load_model("builtin"), "trained (assets/demo_target)"
    elif name == "cifar10":
        net = _random_unet(UNet, {**CIFAR10_UNET_CONFIG, "dropout": 0.0})
        model = EpsModel(net, linear_schedule(), net.image_shape, {"kind": "benchmark", **net.config},
                         format="benchmark")
        weights = "random, xavier gain 1"
    else:
        raise ConfigError(f"benchmark model {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    model = model.eval()
    net = getattr(model, "net", model)
    description = {"name": name, "weights": weights, "image_shape": list(model.image_shape),
                   "parameters": count_parameters(net) if isinstance(net, torch.nn.Module) else None,
                   "config": dict(getattr(net, "config", {}))}
    return model, description


def _random_unet(unet_class, config: dict) -> torch.nn.Module:
    """A UNet with every convolution and linear layer drawn with xavier gain 1, seeded.

    DDPM's initialisation (gain 1e-5 on the last layer of each residual branch and on the
    output) makes eps ~ 0, and with eps ~ 0 the t-error's round trip is exact up to float32
    rounding: scores would be rounding noise and comparing implementations meaningless.
    Gain 1 gives O(1) noise predictions (t-errors ~1e-5 per pixel). Throughput is the same.
    """
    torch.manual_seed(0)
    net = unet_class(**config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.xavier_uniform_(module.weight, gain=1.0)
    return net.eval()


def _explicit_attention(self, x: torch.Tensor) -> torch.Tensor:
    # pytorch-ddpm's AttnBlock.forward as SecMI runs it: q k^T by bmm, softmax, then bmm with v.
    batch, channels, height, width = x.shape
    h = self.group_norm(x)
    q = self.proj_q(h).permute(0, 2, 3, 1).view(batch, height * width, channels)
    k = self.proj_k(h).view(batch, channels, height * width)
    w = torch.bmm(q, k) * (int(channels) ** (-0.5))
    w = F.softmax(w, dim=-1)
    v = self.proj_v(h).permute(0, 2, 3, 1).view(batch, height * width, channels)
    h = torch.bmm(w, v)
    h = h.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return x + self.proj(h)


def reference_unet(net: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """A copy of `net` that runs as pytorch-ddpm's UNet does (explicit bmm + softmax attention), same weights.

    Returns (module, what it is). Networks other than our pytorch-ddpm-compatible UNet are
    copied unchanged.
    """
    from .models.unet import AttnBlock, UNet

    reference = copy.deepcopy(net)
    if not isinstance(net, UNet):
        return reference, f"{type(net).__name__} (copied unchanged)"
    reference.set_fused(False)  # torch's own layers, whatever the copied model was set to
    patched = 0
    for module in reference.modules():
        if isinstance(module, AttnBlock):
            module.forward = _explicit_attention.__get__(module, AttnBlock)
            patched += 1
    return reference, f"pytorch-ddpm UNet (explicit bmm+softmax attention in {patched} blocks), same weights"


@contextlib.contextmanager
def cuda_tf32(cudnn: bool, matmul: bool):
    """Set whether cuDNN convolutions and CUDA matrix multiplies may use TF32; restores the caller's settings."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class SecmiBaseline:
    """SecMI's t-error as its reference code runs it: fp32, eager, channels-first, one DDIM step at a time in torch ops.

    Each step gathers its coefficients from the float64 abar table and casts them to
    float32 per call, as SecMI's `ddim_singlestep` does; the UNet is pytorch-ddpm's
    (see reference_unet). A batch is uploaded, scored and brought back to the host. On
    CUDA it runs with PyTorch's default TF32 settings, or with TF32 off (`strict`).
    """

    def __init__(self, model, device: torch.device, t_sec: int = 100, k: int = 10, strict: bool = False):
        net = getattr(model, "net", model)
        self.net, self.description = reference_unet(net)
        self.net = self.net.to(device).eval()
        self.device = device
        self.abar = torch.from_numpy(np.array(model.schedule.abar, dtype=np.float64)).to(device)
        self.t_sec, self.k = t_sec, k
        on_cuda_defaults = device.type == "cuda" and not strict
        self.tf32 = dict(TORCH_DEFAULT_TF32) if on_cuda_defaults else {"cudnn": False, "matmul": False}
        # What its UNet calls run at, for the FLOP rate's reference (convolutions dominate).
        self.call_precision = "tf32" if self.tf32["cudnn"] else "fp32"

    def _coefficient(self, t_index: torch.Tensor) -> torch.Tensor:
        return torch.gather(self.abar, 0, t_index).float().view(-1, 1, 1, 1)

    def _step(self, x: torch.Tensor, t_c: int, t_target: int) -> torch.Tensor:
        t_c_index = x.new_ones([x.shape[0]], dtype=torch.long) * t_c
        t_target_index = x.new_ones([x.shape[0]], dtype=torch.long) * t_target
        abar_c, abar_target = self._coefficient(t_c_index), self._coefficient(t_target_index)
        with torch.no_grad(), cuda_tf32(**self.tf32):
            eps = self.net(x, t_c_index)
        x0_pred = (x - (1 - abar_c).sqrt() * eps) / abar_c.sqrt()
        return abar_target.sqrt() * x0_pred + (1 - abar_target).sqrt() * eps

    def score_batch(self, images_uint8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images_uint8).to(self.device).float() / 255.0 * 2.0 - 1.0
        t_sec, k = self.t_sec, self.k
        for t_c in range(0, t_sec - k, k):
            x = self._step(x, t_c, t_c + k)
        x_tilde = x
        x_up = self._step(x_tilde, t_sec - k, t_sec)
        x_back = self._step(x_up, t_sec, t_sec - k)
        return ((x_back - x_tilde) ** 2).flatten(1).sum(1).cpu().numpy().astype(np.float64)

    def score(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([self.score_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


# ---------------------------------------------------------------------------- machine limits

def unet_flops_per_image(model, device: torch.device) -> float:
    """Floating-point operations of one UNet call on one image (torch.utils.flop_counter; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, *model.image_shape, device=device)
    t = torch.full((2,), 10, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t)
    return counter.get_total_flops() / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rates(device: torch.device, quick: bool = False) -> dict:
    """GFLOP/s of square matrix multiplies on this device, measured now: {precision}_gflops and {precision}_size.

    A CPU: fp32 and bf16 (1024; 512 for bf16 where the CPU emulates it). CUDA: fp32 with
    TF32 off, tf32 (float32 inputs, TF32 on), bf16 and fp16 (8192; 4096 with quick).
    """
    from .precision import cpu_has_fast_bf16

    cases = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False)]
    if device.type == "cuda":
        cases = [("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False),
                 ("fp16", torch.float16, False)]
    out = {}
    for name, dtype, tf32 in cases:
        if device.type == "cuda":
            n = 4096 if quick else 8192
        else:
            n = 1024 if (dtype == torch.float32 or cpu_has_fast_bf16()) else 512
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        with cuda_tf32(cudnn=tf32, matmul=tf32):
            a @ b
            _sync(device)
            best = math.inf
            for _ in range(3):
                started = time.perf_counter()
                repeats = 10 if device.type == "cuda" else 2
                for _ in range(repeats):
                    a @ b
                _sync(device)
                best = min(best, (time.perf_counter() - started) / repeats)
        out[f"{name}_gflops"] = 2 * n ** 3 / best / 1e9
        out[f"{name}_size"] = n
    return out


def peak_fraction(seconds: float, images: int, flops: float, calls: Sequence[tuple[str, int]],
                  matmul: dict | None) -> float | None:
    """Time the UNet calls would take at the measured matrix-multiply rates / the time measured.

    `calls`: (call precision, UNet calls per image) pairs; tf32 is fp32 where no tf32 rate was
    measured (a CPU). None where a rate was not measured.
    """
    if not matmul:
        return None
    ideal = 0.0
    for precision, count in calls:
        rate = matmul.get(f"{precision}_gflops") or (matmul.get("fp32_gflops") if precision == "tf32" else None)
        if not rate:
            return None
        ideal += images * count * flops / (rate * 1e9)
    return ideal / seconds


# ---------------------------------------------------------------------------- timing

def _time_job(job: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of one job, the device drained before and after."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = job()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _load_average() -> list | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


# Below this RMS per-pixel difference a t-error is float32 rounding noise (about 8 ulps of 1.0):
# the model's eps hardly moves between t_sec - k and t_sec, so the round trip is exact up to
# rounding, and implementations that round differently give unrelated scores.
ROUNDING_RMS = 1e-6


def rms_per_pixel(scores: np.ndarray, image_shape) -> float:
    """sqrt(median score / pixels): the typical per-pixel size of the t-error's difference."""
    return float(np.sqrt(np.median(scores) / float(np.prod(image_shape))))


def _images_for(model, n: int, seed: int = 0) -> np.ndarray:
    from .data import load_data

    if getattr(model, "format", "") == "qmia":
        # The trained demo target: score the demo images themselves, repeated to n.
        images = load_data("builtin").images
        return np.ascontiguousarray(np.resize(images, (n, *images.shape[1:])))
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *model.image_shape), dtype=np.uint8)


def _runs_as(kwargs: dict, device: torch.device) -> tuple[str, bool]:
    """(resolved precision, fused) a variant will run at, for a model the scorer keeps in channels_last memory."""
    from .models.unet import FUSED_BY_DEFAULT

    fused = kwargs.get("fused")
    return (resolve_precision(kwargs["precision"], device, method="secmi"),
            bool(FUSED_BY_DEFAULT.get(device.type, False)) if fused is None else fused)


def scoring_variants(specs: Sequence[str], device: torch.device, *, skip_emulated_bf16: bool = False,
                     direct_layers: bool = False) -> tuple[dict, list]:
    """{label: Scorer keyword arguments} for the variants to time, and notes on what was left out.

    'auto' is timed under its own label and a variant that runs as an earlier one (resolved
    precision and fusion) is not timed twice; skip_emulated_bf16 leaves out the bf16 variants
    where the CPU emulates bf16; direct_layers adds fp32-direct (CPU only: fp32 on
    channels_last with torch's convolutions instead of the Winograd layers).
    """
    from .precision import cpu_has_fast_bf16

    variants, notes, seen = {}, [], {}
    ordered = sorted(specs, key=lambda spec: spec != "auto")  # auto first: the others are compared with it
    for spec in ordered:
        kwargs = parse_variant(spec)
        runs_as = _runs_as(kwargs, device)
        if runs_as in seen:
            notes.append(f"{spec}: the same as {seen[runs_as]} here")
            continue
        if (skip_emulated_bf16 and runs_as[0] in ("bf16", "mixed") and device.type == "cpu"
                and not cpu_has_fast_bf16()):
            notes.append(f"{spec}: skipped, this CPU emulates bf16 (see the demo model's row)")
            continue
        seen[runs_as] = spec
        variants[spec] = kwargs
    if direct_layers and device.type == "cpu":
        variants["fp32-direct"] = {"precision": "fp32", "fast_layers": False, "channels_last": True}
    return variants, notes


def _warm_up(device: torch.device, baselines: dict, scorers: dict, batch: np.ndarray) -> None:
    """Untimed first runs on one batch: on a GPU a whole batch per path (CUDA graph capture, cuDNN plans);
    on a CPU one UNet call per path (oneDNN primitive creation), which is all a CPU needs."""
    if device.type == "cuda":
        for baseline in baselines.values():
            baseline.score(batch, len(batch))
        for scorer in scorers.values():
            scorer.score(batch)
        return
    x = torch.from_numpy(batch).float() / 255.0 * 2.0 - 1.0
    for baseline in baselines.values():
        baseline._step(x, 0, baseline.k)
    for scorer in scorers.values():
        with torch.inference_mode():
            scorer._eps(scorer._prepare(torch.from_numpy(batch)), 0, call_precisions(scorer.config.precision)[0])


def _entry(timed: dict, images: int, calls: int, flops: float, call_mix, matmul) -> dict:
    wall, cpu = statistics.median(timed["wall"]), statistics.median(timed["cpu"])
    return {"images_per_s_wall": images / wall, "images_per_s_cpu": images / cpu, "seconds_wall": timed["wall"],
            "seconds_cpu": timed["cpu"], "unet_gflops_wall": images * calls * flops / wall / 1e9,
            "matmul_peak_fraction": peak_fraction(wall, images, flops, call_mix, matmul)}


def _ratios(entry: dict, timed: dict, key: str, reference: str, suffix: str = "") -> None:
    # Ratios of adjacent (same-round) timings: both saw the same machine load.
    for clock in ("wall", "cpu"):
        entry[f"ratio_{clock}{suffix}"] = statistics.median(
            b / c for b, c in zip(timed[reference][clock], timed[key][clock]))


def _differences(entry: dict, scores: np.ndarray, reference: np.ndarray, name: str) -> None:
    diff = np.abs(scores - reference) / np.maximum(np.abs(reference), 1e-30)
    entry[f"max_rel_diff_vs_{name}"] = float(diff.max())
    entry[f"median_rel_diff_vs_{name}"] = float(np.median(diff))


def scoring_rows(options: BenchOptions, log: Callable[[str], None] = lambda s: None, matmul: dict | None = None,
                 on_case: Callable[[dict], dict | None] | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ("model", info) once per model, then ("row", row) per batch size: images/s per path, timed alternately.

    Paths: "baseline" (the plain loop with PyTorch's defaults), on CUDA also "baseline-fp32"
    (the same loop with TF32 off), then each variant's Scorer (its own copy of the model,
    unet_batch = the row's batch size). on_case(context) may add entries to a row (bench/
    adds kernel profiles); context holds the model, device, batch, images, baselines and scorers.
    """
    from .scoring import Scorer

    device = torch.device(options.device)
    per_job = options.batches_per_job or (4 if device.type == "cuda" else 1)
    specs = options.precisions or DEFAULT_VARIANTS.get(device.type, DEFAULT_VARIANTS["cpu"])
    calls = options.t_sec // options.k + 1
    for name in options.models:
        model, description = build_model(name, device)
        flops = unet_flops_per_image(model.to(device), device)
        baselines = {"baseline": SecmiBaseline(model, device, options.t_sec, options.k)}
        if device.type == "cuda":
            baselines["baseline-fp32"] = SecmiBaseline(model, device, options.t_sec, options.k, strict=True)
        variants, notes = scoring_variants(specs, device, skip_emulated_bf16=name != "demo" and not options.slow_bf16,
                                           direct_layers=options.direct_layers)
        yield "model", {"model": name, "description": description, "baseline": baselines["baseline"].description,
                        "baseline_tf32": {key: b.tf32 for key, b in baselines.items()},
                        "auto_resolves_to": resolve_precision("auto", device, method="secmi"), "notes": notes,
                        "variants": variants, "unet_gflop_per_image": flops / 1e9}
        for batch in options.batch_sizes.get(name, []):
            images = _images_for(model, batch * per_job)

            def make_scorer(kwargs: dict) -> Scorer:
                return Scorer(copy.deepcopy(model), "secmi", t_sec=options.t_sec, k=options.k, batch_size=batch,
                              unet_batch=batch, device=device, **kwargs)

            scorers = {label: make_scorer(kwargs) for label, kwargs in variants.items()}
            jobs = {key: (lambda b: lambda: b.score(images, batch))(b) for key, b in baselines.items()}
            jobs.update({label: (lambda s: lambda: s.score(images))(s) for label, s in scorers.items()})
            log(f"{name} batch {batch}: warm-up")
            _warm_up(device, baselines, scorers, images[:batch])
            timed = {key: {"wall": [], "cpu": []} for key in jobs}
            results = {}
            for round_index in range(options.rounds):
                for key, job in jobs.items():
                    wall, cpu, results[key] = _time_job(job, device)
                    timed[key]["wall"].append(wall)
                    timed[key]["cpu"].append(cpu)
                log(f"{name} batch {batch}: round {round_index + 1}/{options.rounds}: " + ", ".join(
                    f"{key} {len(images) / timed[key]['wall'][-1]:.1f} img/s" for key in jobs))
            row = {"model": name, "batch_size": batch, "images_per_job": len(images), "unet_calls_per_image": calls,
                   "unet_gflop_per_image": flops / 1e9, "load_average": _load_average(),
                   "score_rms_per_pixel": rms_per_pixel(results["baseline"], model.image_shape), "results": {}}
            for key in jobs:
                if key in baselines:
                    entry = _entry(timed[key], len(images), calls, flops, [(baselines[key].call_precision, calls)],
                                   matmul)
                    entry["tf32"] = baselines[key].tf32
                else:
                    scorer = scorers[key]
                    inversion, round_trip = call_precisions(scorer.config.precision)
                    entry = _entry(timed[key], len(images), calls, flops, [(inversion, calls - 2), (round_trip, 2)],
                                   matmul)
                    entry.update({"precision_resolved": scorer.config.precision, "fused": scorer.fused,
                                  "channels_last": scorer.channels_last, "fast_layers": scorer.fast_layers,
                                  "cuda_graphs": scorer.cuda_graphs, "recomputed_fp32": scorer.recomputed_fp32})
                if key != "baseline":
                    _ratios(entry, timed, key, "baseline")
                    _differences(entry, results[key], results["baseline"], "baseline")
                if "baseline-fp32" in baselines and key != "baseline-fp32":
                    _ratios(entry, timed, key, "baseline-fp32", "_strict")
                    _differences(entry, results[key], results["baseline-fp32"], "strict")
                row["results"][key] = entry
            if on_case is not None:
                row.update(on_case({"model_name": name, "model": model, "device": device, "batch": batch,
                                    "images": images, "baselines": baselines, "scorers": scorers,
                                    "variants": variants, "make_scorer": make_scorer}) or {})
            yield "row", row


def best_wall(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest wall time of `repeats` runs of fn (on a shared machine the minimum is the least disturbed)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_vote(n: int = 1_000_000, n_models: int = 7, repeats: int = 3) -> dict:
    """The compiled vote kernel against the same majority vote and mean margin in numpy."""
    from .kernels import vote

    rng = np.random.default_rng(0)
    scores = rng.normal(size=n)
    thresholds = scores[None, :] + rng.normal(size=(n_models, n))
    scores_t, thresholds_t = torch.from_numpy(scores), torch.from_numpy(thresholds)

    def numpy_vote():
        votes = (scores[None, :] < thresholds).sum(axis=0)
        return votes, 2 * votes > n_models, (thresholds - scores[None, :]).mean(axis=0)

    kernel_s = best_wall(lambda: vote(scores_t, thresholds_t), repeats)
    numpy_s = best_wall(numpy_vote, repeats)
    return {"n": n, "models": n_models, "kernel_s": kernel_s, "numpy_s": numpy_s, "ratio": numpy_s / kernel_s}


# ---------------------------------------------------------------------------- accuracy

def accuracy_check(precisions: Sequence[str] = ("auto",), device: str = "cpu", batch_size: int | None = None,
                   seed: int = 0, n_models: int = 7, tolerance: float = 0.005, method: str = "recommended",
                   max_per_set: int | None = None, log: Callable[[str], None] = lambda s: None,
                   on_update: Callable[[dict], None] | None = None) -> dict:
    """The demo audit (pipeline.run_audit, in memory) on strict fp32 scores and on each variant's scores.

    The reference is strict fp32 on torch's own layers (direct convolutions on a CPU, TF32
    off on CUDA); each variant (parse_variant) runs with the scorer's defaults otherwise.
    The bag is fitted with the same seed each time, so only the scores differ; AUC and
    TPR@1%FPR of every method must agree within `tolerance`. `method`: "recommended" (what
    `qmia-fast attack` uses on the demo), or secmi / loss / pia. max_per_set: a seeded subset of
    each set (a quick dry run). on_update(report) after each audit.
    """
    from .models import BUILTIN_TARGET_DIR
    from .pipeline import AttackSpec, AuditSpec, ScoreSpec, run_audit

    if not (BUILTIN_TARGET_DIR / "config.json").is_file():
        raise ConfigError(f"the accuracy check needs the trained demo target in {BUILTIN_TARGET_DIR}; "
                          "train it first (see bench/README.md)")
    if method not in ("recommended", "secmi", "loss", "pia"):
        raise ConfigError(f"method = {method!r} must be recommended, secmi, loss or pia")
    reference = "fp32-strict"
    variants = {reference: {"precision": "fp32", "fused": False, "fast_layers": False if device == "cpu" else None}}
    variants.update({spec: parse_variant(spec) for spec in precisions})
    report: dict = {"model": "builtin demo target", "device": device, "tolerance": tolerance, "reference": reference,
                    "runs": {}, "comparison_to_reference": {}, "complete": False}
    scores = {}
    for label, kwargs in variants.items():
        spec = AuditSpec(score=ScoreSpec(method=None if method == "recommended" else method, device=device,
                                         batch_size=batch_size, **kwargs),
                         attack=AttackSpec(n_models=n_models, max_per_set=max_per_set), seed=seed, out=None)
        result = run_audit(spec)
        scores[label] = np.concatenate([result.raw_scores[name] for name in ("members", "public", "holdout")])
        resolved = result.report["config"]["score"]
        report["score"] = {k: v for k, v in resolved.items()
                           if k not in ("precision", "device", "fused", "fast_layers")}
        report["images"] = int(len(scores[label]))
        rms = rms_per_pixel(scores[label], result.attack.fit_info["image_shape"])
        report["runs"][label] = {
            "precision_resolved": resolved["precision"], "fused": resolved.get("fused"),
            "fast_layers": resolved.get("fast_layers"),
            "score_seconds": result.report["timings_s"]["score_s"], "score_rms_per_pixel": rms,
            # Only a t-error can be a round trip's rounding noise.
            "scores_are_rounding_noise": resolved["method"] == "secmi" and rms < ROUNDING_RMS,
            "metrics": {name: {"auc": entry["auc"], "tpr_at_1%fpr": entry["tpr_at_fpr"]["1%"]}
                        for name, entry in result.report["methods"].items()}}
        log(f"accuracy: {label}: {report['runs'][label]['metrics']}")
        if label != reference:
            base = report["runs"][reference]["metrics"]
            run_metrics = report["runs"][label]["metrics"]
            rel = np.abs(scores[label] - scores[reference]) / np.maximum(np.abs(scores[reference]), 1e-30)
            # None: a metric the sample cannot resolve (TPR at 1% FPR needs >= 100 non-members).
            deltas = {name: {key: None if run_metrics[name][key] is None or base[name][key] is None
                             else abs(run_metrics[name][key] - base[name][key]) for key in base[name]}
                      for name in base}
            compared = [d for m in deltas.values() for d in m.values() if d is not None]
            report["comparison_to_reference"][label] = {
                "max_rel_score_diff": float(rel.max()), "median_rel_score_diff": float(np.median(rel)),
                "spearman": spearman(scores[label], scores[reference]), "deltas": deltas,
                "within_tolerance": bool(compared) and all(d <= tolerance for d in compared)}
        report["meaningful"] = not report["runs"][reference]["scores_are_rounding_noise"]
        if on_update is not None:
            on_update(report)
    report["complete"] = True
    return report


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (continuous scores: ties are measure-zero, ranks by argsort)."""
    ranks_a, ranks_b = np.empty(len(a)), np.empty(len(b))
    ranks_a[np.argsort(a, kind="stable")] = np.arange(len(a))
    ranks_b[np.argsort(b, kind="stable")] = np.arange(len(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


# ---------------------------------------------------------------------------- driver and table

def environment(device: torch.device) -> dict:
    """The conditions of a run: versions, threads, CPU features, GPU, load."""
    from .precision import cpu_flags, cpu_has_fast_bf16

    flags = cpu_flags()
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu_flags": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
           "cpu_fast_bf16": cpu_has_fast_bf16(), "load_average": _load_average(), "device": str(device)}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            env["cpu_model"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                                    None)
    except OSError:
        env["cpu_model"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


def run(options: BenchOptions, log: Callable[[str], None] = lambda s: None,
        on_update: Callable[[dict], None] | None = None,
        on_case: Callable[[dict], dict | None] | None = None) -> dict:
    """The whole benchmark as one JSON report; on_update(report) after each part, so a killed run keeps what ran."""
    if options.threads is not None:
        torch.set_num_threads(int(options.threads))
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device; use --device cpu")
    update = on_update or (lambda report: None)
    started = time.perf_counter()
    report: dict = {"benchmark": "qmia-fast scoring (SecMI t-error)", "options": _options_dict(options),
                    "environment": environment(device), "complete": False, "models": [], "scoring": []}
    if options.matmul:
        log("matrix-multiply rates")
        report["matmul"] = matmul_rates(device, options.quick)
        update(report)
    for kind, item in scoring_rows(options, log, report.get("matmul"), on_case):
        report["models" if kind == "model" else "scoring"].append(item)
        update(report)
    if options.vote:
        log("vote kernel vs numpy")
        report["vote"] = bench_vote(n=200_000 if options.quick else 1_000_000)
    report["seconds"] = time.perf_counter() - started
    report["complete"] = True
    update(report)
    return report


def _options_dict(options: BenchOptions) -> dict:
    return {key: (list(value) if isinstance(value, (list, tuple)) else value)
            for key, value in options.__dict__.items()}


def _label(key: str, entry: dict) -> str:
    return f"{key}={entry['precision_resolved']}" if key == "auto" else key


def format_table(report: dict) -> str:
    """The report as a human-readable table ('vs fp32 loop' only where a strict-fp32 baseline ran: CUDA)."""
    env = report.get("environment", {})
    lines = [f"qmia-fast scoring benchmark: SecMI t-error ({report['options']['t_sec']}, {report['options']['k']}), "
             f"device {env.get('device')}, torch {env.get('torch')}, {env.get('torch_threads')} thread(s), "
             f"CPU {env.get('cpu_model')}, load {env.get('load_average')}"]
    if env.get("gpu"):
        lines.append(f"GPU: {env['gpu']['name']} (sm {env['gpu']['capability']}, CUDA {env['gpu'].get('cuda')})")
    matmul = report.get("matmul")
    if matmul:
        lines.append("matmul rates measured now: " + ", ".join(
            f"{name} {matmul[name + '_gflops']:.0f}" for name in ("fp32", "tf32", "bf16", "fp16")
            if name + "_gflops" in matmul) + " GFLOP/s")
    for info in report.get("models", []):
        lines.append(f"model {info['model']}: {info['description']['parameters'] / 1e6:.2f}M parameters, "
                     f"{info['unet_gflop_per_image']:.2f} GFLOP per UNet call, "
                     f"weights {info['description']['weights']}; "
                     f"baseline: {info['baseline']}; auto -> {info['auto_resolves_to']}"
                     + (f"; {'; '.join(info['notes'])}" if info.get("notes") else ""))
    rows = report.get("scoring", [])
    strict = any("ratio_wall_strict" in e for row in rows for e in row["results"].values())
    width = max([11] + [len(_label(k, e)) for row in rows for k, e in row["results"].items()])
    header = (f"{'model':<8} {'batch':>5} {'variant':<{width}} {'fused':>5} {'img/s wall':>10} {'img/s cpu':>9} "
              f"{'ratio wall':>10} {'ratio cpu':>9} " + (f"{'vs fp32 loop':>12} " if strict else "")
              + f"{'UNet GFLOP/s':>12} {'of peak':>7} {'max rel diff':>12}")
    lines += ["", header, "-" * len(header)]
    for row in rows:
        for key, entry in row["results"].items():
            fused = {True: "on", False: "off"}.get(entry.get("fused"), "-")
            ratio_wall = f"{entry['ratio_wall']:.2f}x" if "ratio_wall" in entry else "1"
            ratio_cpu = f"{entry['ratio_cpu']:.2f}x" if "ratio_cpu" in entry else "1"
            vs_strict = (f"{entry['ratio_wall_strict']:.2f}x" if "ratio_wall_strict" in entry
                         else "1" if key == "baseline-fp32" else "-")
            peak = entry.get("matmul_peak_fraction")
            diff = entry.get("max_rel_diff_vs_strict" if strict else "max_rel_diff_vs_baseline")
            diff = "-" if diff is None else f"{diff:.1e}"
            lines.append(f"{row['model']:<8} {row['batch_size']:>5} {_label(key, entry):<{width}} {fused:>5} "
                         f"{entry['images_per_s_wall']:>10.2f} {entry['images_per_s_cpu']:>9.2f} {ratio_wall:>10} "
                         f"{ratio_cpu:>9} " + (f"{vs_strict:>12} " if strict else "")
                         + f"{entry['unet_gflops_wall']:>12.1f} "
                         f"{(f'{100 * peak:.0f}%' if peak is not None else '-'):>7} {diff:>12}")
    if strict:
        lines.append("(vs fp32 loop: the same loop with TF32 off; max rel diff: against that loop's scores)")
    noisy = sorted({row["model"] for row in rows if row.get("score_rms_per_pixel", 1.0) < ROUNDING_RMS})
    if noisy:
        lines.append(f"note: {', '.join(noisy)}: the t-errors are float32 rounding noise (RMS per pixel < "
                     f"{ROUNDING_RMS:g}), so 'max rel diff' compares rounding, not the computation")
    if "vote" in report:
        v = report["vote"]
        lines.append(f"\nvote ({v['n']} x {v['models']}): kernel {v['kernel_s'] * 1e3:.1f} ms, numpy "
                     f"{v['numpy_s'] * 1e3:.1f} ms, {v['ratio']:.1f}x")
    if not report.get("complete", True):
        lines.append("(incomplete: the run stopped before every case was timed)")
    return "\n".join(lines)


def format_accuracy(report: dict) -> str:
    """The accuracy check as readable lines."""
    lines = [f"demo attack on {report.get('images')} images ({report['model']}, {report.get('device')}), score "
             f"{report.get('score')}, reference {report['reference']}, tolerance {report['tolerance']}"]
    def number(value) -> str:
        return "  n/a " if value is None else f"{value:.4f}"

    for label, run in report["runs"].items():
        for method, values in run["metrics"].items():
            lines.append(f"  {label:<11} ({run['precision_resolved']:<4}) {method:<18} AUC {number(values['auc'])}  "
                         f"TPR@1%FPR {number(values['tpr_at_1%fpr'])}   scoring {run['score_seconds']:.0f} s")
    if not report.get("meaningful", True):
        lines.append(f"WARNING: the reference t-errors are float32 rounding noise (RMS per pixel "
                     f"{report['runs'][report['reference']]['score_rms_per_pixel']:.1e} < {ROUNDING_RMS:g}): the "
                     "target's eps barely changes over the round trip (under-trained?); this check says nothing")
    for label, verdict in report["comparison_to_reference"].items():
        worst = max((d for m in verdict["deltas"].values() for d in m.values() if d is not None), default=None)
        lines.append(f"{label} vs {report['reference']}: largest metric change {number(worst)} "
                     f"({'within' if verdict['within_tolerance'] else 'OUTSIDE'} {report['tolerance']}); "
                     f"scores differ by {verdict['median_rel_score_diff']:.1e} (median) / "
                     f"{verdict['max_rel_score_diff']:.1e} (max) relative; Spearman {verdict['spearman']:.6f}")
    return "\n".join(lines)
