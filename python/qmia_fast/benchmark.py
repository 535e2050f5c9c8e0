"""Scoring throughput benchmark: SecMI t-error with a SecMI-style plain-PyTorch baseline against qmia-fast, timed alternately in one process.

Used by `qmia-fast bench` and bench/bench_scoring.py. Nothing here asserts a timing:
it measures, records the conditions (threads, clocks, load, devices) and reports ratios
that were measured in the same run on the same model and images.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError
from .precision import call_precisions

__all__ = [
    "MODEL_NAMES",
    "BenchOptions",
    "build_model",
    "reference_unet",
    "SecmiBaseline",
    "unet_flops_per_image",
    "matmul_rates",
    "bench_scoring",
    "bench_vote",
    "bench_bag",
    "accuracy_check",
    "run",
    "format_table",
    "format_accuracy",
]

MODEL_NAMES = ("demo", "cifar10")
# The demo target's architecture (assets/demo_target): used with random weights until it is trained.
DEMO_UNET_CONFIG = {"T": 1000, "ch": 32, "ch_mult": [1, 2, 2], "attn": [2], "num_res_blocks": 1, "dropout": 0.0,
                    "in_ch": 1, "img_size": 28}


@dataclass
class BenchOptions:
    """What to measure; the defaults are the full run, `quick_defaults()` a few-minute one."""

    models: Sequence[str] = ("demo", "cifar10")
    batch_sizes: dict = field(default_factory=lambda: {"demo": [16, 32, 64, 128, 256, 512, 1024],
                                                         "cifar10": [16, 32]})
    precisions: Sequence[str] = ("auto", "fp32", "bf16")
    direct_layers: bool = True  # also time fp32 without the Winograd/GroupNorm CPU layers (CPU only)
    slow_bf16: bool = False     # time bf16 on the CIFAR-10 model even where the CPU emulates bf16
    device: str = "cpu"
    threads: int | None = None
    rounds: int = 3            # timed rounds per case; each round times the baseline and every variant once
    batches_per_job: int | None = None  # batches per timed job; None: 1 on a CPU, 4 on a GPU (overlap shows)
    t_sec: int = 100
    k: int = 10
    vote: bool = True
    bag: bool = True
    matmul: bool = True
    quick: bool = False

    @classmethod
    def quick_defaults(cls, **overrides) -> "BenchOptions":
        options = cls(batch_sizes={"demo": [32], "cifar10": [16]}, rounds=2, quick=True)
        for key, value in overrides.items():
            setattr(options, key, value)
        return options


# ---------------------------------------------------------------------------- models

def build_model(name: str, device: torch.device | str = "cpu"):
    """(EpsModel, description) for a benchmark model name: 'demo' or 'cifar10'.

    'demo' is the shipped demo target when it is installed, else a randomly initialised
    UNet of its architecture; 'cifar10' is the 35.7M-parameter CIFAR-10 DDPM architecture
    with random weights (throughput does not depend on the weights' values).
    """
    from .models import BUILTIN_TARGET_DIR, CIFAR10_UNET_CONFIG, EpsModel, UNet, count_parameters, load_model
    from .schedule import linear_schedule

    if name == "demo":
        if (BUILTIN_TARGET_DIR / "config.json").is_file():
            model = load_model("builtin")
            weights = "trained (assets/demo_target)"
        else:
            net = _random_unet(UNet, DEMO_UNET_CONFIG)
            model = EpsModel(net, linear_schedule(), net.image_shape, {"kind": "benchmark", **net.config},
                             format="benchmark")
            weights = "random, xavier gain 1 (demo target not trained yet)"
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
                   "config": {k: v for k, v in getattr(net, "config", {}).items()}}
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
    patched = 0
    for module in reference.modules():
        if isinstance(module, AttnBlock):
            module.forward = _explicit_attention.__get__(module, AttnBlock)
            patched += 1
    return reference, f"pytorch-ddpm UNet (explicit bmm+softmax attention in {patched} blocks), same weights"


class SecmiBaseline:
    """SecMI's t-error the way its reference code runs it: fp32, eager, one DDIM step at a time in torch ops.

    Each step gathers its coefficients from the float64 abar table and casts them to
    float32 per call, as SecMI's `ddim_singlestep` does; the UNet is pytorch-ddpm's
    (see reference_unet). A batch is uploaded, scored and brought back to the host.
    """

    def __init__(self, model, device: torch.device, t_sec: int = 100, k: int = 10):
        net = getattr(model, "net", model)
        self.net, self.description = reference_unet(net)
        self.net = self.net.to(device).eval()
        self.device = device
        self.abar = torch.from_numpy(np.array(model.schedule.abar, dtype=np.float64)).to(device)
        self.t_sec, self.k = t_sec, k

    def _coefficient(self, t_index: torch.Tensor) -> torch.Tensor:
        return torch.gather(self.abar, 0, t_index).float().view(-1, 1, 1, 1)

    def _step(self, x: torch.Tensor, t_c: int, t_target: int) -> torch.Tensor:
        t_c_index = x.new_ones([x.shape[0]], dtype=torch.long) * t_c
        t_target_index = x.new_ones([x.shape[0]], dtype=torch.long) * t_target
        abar_c, abar_target = self._coefficient(t_c_index), self._coefficient(t_target_index)
        with torch.no_grad():
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
    """GFLOP/s of square float32 and bfloat16 matrix multiplies on this device, measured now.

    float32 runs with TF32 off (true fp32). Sizes: 1024 on a CPU (512 for bf16 where the
    CPU has no bf16 instructions and emulates it), 8192 on a GPU.
    """
    from .precision import cpu_has_fast_bf16, matmul_precision

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if device.type == "cuda":
            n = 4096 if quick else 8192
        else:
            n = 1024 if (dtype == torch.float32 or cpu_has_fast_bf16()) else 512
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        with matmul_precision("fp32"):
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


# ---------------------------------------------------------------------------- timing

@dataclass
class _Timed:
    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)


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


def scoring_variants(options: BenchOptions, model_name: str, device: torch.device) -> tuple[dict, list]:
    """{label: Scorer keyword arguments} for the qmia-fast variants to time, and notes on what was left out.

    'auto' is timed under its own label; a listed precision that auto resolved to is not
    timed twice. bf16 on the CIFAR-10 model is skipped where the CPU emulates bf16 (slow_bf16
    times it anyway).
    """
    from .precision import cpu_has_fast_bf16, resolve_precision

    variants, notes = {}, []
    auto = resolve_precision("auto", device, method="secmi")
    for precision in options.precisions:
        if precision != "auto" and "auto" in options.precisions and precision == auto:
            notes.append(f"{precision}: the same as auto here")
            continue
        resolved = resolve_precision(precision, device, method="secmi")
        if (resolved in ("bf16", "mixed") and device.type == "cpu" and not cpu_has_fast_bf16() and model_name != "demo"
                and not options.slow_bf16):
            notes.append("bf16: skipped, this CPU emulates bf16 (see the demo model's row)")
            continue
        variants[precision] = {"precision": precision}
    if options.direct_layers and device.type == "cpu":
        variants["fp32-direct"] = {"precision": "fp32", "fast_layers": False}
    return variants, notes


def _warm_up(device: torch.device, jobs: dict, baseline: "SecmiBaseline", scorers: dict, batch: np.ndarray) -> None:
    """Untimed first runs: a whole job on a GPU (graph capture, cuDNN plans); one UNet call per path on a CPU
    (oneDNN primitive creation), which is all a CPU needs and saves a job per case."""
    if device.type == "cuda":
        for job in jobs.values():
            job()
        return
    x = torch.from_numpy(batch).float() / 255.0 * 2.0 - 1.0
    baseline._step(x, 0, baseline.k)
    for scorer in scorers.values():
        with torch.inference_mode():
            scorer._eps(scorer._prepare(torch.from_numpy(batch)), 0, call_precisions(scorer.config.precision)[0])


def bench_scoring(options: BenchOptions, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """One row per (model, batch size): baseline and qmia-fast images/s per variant, timed alternately."""
    from .precision import resolve_precision
    from .scoring import Scorer

    device = torch.device(options.device)
    per_job = options.batches_per_job or (4 if device.type == "cuda" else 1)
    rows = []
    for name in options.models:
        model, description = build_model(name, device)
        flops = unet_flops_per_image(model.to(device), device)
        calls = options.t_sec // options.k + 1
        baseline = SecmiBaseline(model, device, options.t_sec, options.k)
        variants, notes = scoring_variants(options, name, device)
        for batch in options.batch_sizes.get(name, []):
            images = _images_for(model, batch * per_job)
            scorers = {label: Scorer(model, "secmi", t_sec=options.t_sec, k=options.k, batch_size=batch,
                                     unet_batch=batch, device=device, **kwargs) for label, kwargs in variants.items()}
            jobs = {"baseline": lambda: baseline.score(images, batch)}
            for label, scorer in scorers.items():
                jobs[label] = (lambda s: lambda: s.score(images))(scorer)
            log(f"{name} batch {batch}: warm-up")
            _warm_up(device, jobs, baseline, scorers, images[:batch])
            timed = {key: _Timed() for key in jobs}
            results = {}
            for round_index in range(options.rounds):
                for key, job in jobs.items():
                    wall, cpu, scores = _time_job(job, device)
                    timed[key].wall.append(wall)
                    timed[key].cpu.append(cpu)
                    results.setdefault(key, scores)
                log(f"{name} batch {batch}: round {round_index + 1}/{options.rounds}: " + ", ".join(
                    f"{key} {len(images) / timed[key].wall[-1]:.1f} img/s" for key in jobs))
            base_scores = results["baseline"]
            row = {"model": name, "batch_size": batch, "images_per_job": len(images), "unet_calls_per_image": calls,
                   "unet_gflop_per_image": flops / 1e9, "load_average": _load_average(),
                   "score_rms_per_pixel": rms_per_pixel(base_scores, model.image_shape), "results": {}}
            for key in jobs:
                wall = statistics.median(timed[key].wall)
                cpu = statistics.median(timed[key].cpu)
                entry = {"images_per_s_wall": len(images) / wall, "images_per_s_cpu": len(images) / cpu,
                         "seconds_wall": timed[key].wall, "seconds_cpu": timed[key].cpu,
                         "unet_gflops_wall": len(images) * calls * flops / wall / 1e9}
                if key != "baseline":
                    scorer = scorers[key]
                    entry.update({"precision_resolved": scorer.config.precision, "channels_last": scorer.channels_last,
                                  "fast_layers": scorer.fast_layers, "cuda_graphs": scorer.cuda_graphs})
                    # Ratios of adjacent (same-round) timings: both saw the same machine load.
                    entry["ratio_wall"] = statistics.median(
                        b / c for b, c in zip(timed["baseline"].wall, timed[key].wall))
                    entry["ratio_cpu"] = statistics.median(
                        b / c for b, c in zip(timed["baseline"].cpu, timed[key].cpu))
                    diff = np.abs(results[key] - base_scores) / np.maximum(np.abs(base_scores), 1e-30)
                    entry["max_rel_diff_vs_baseline"] = float(diff.max())
                    entry["median_rel_diff_vs_baseline"] = float(np.median(diff))
                row["results"][key] = entry
            rows.append(row)
        rows.append({"model_info": {"model": name, "description": description, "baseline": baseline.description,
                                    "auto_resolves_to": resolve_precision("auto", device, method="secmi"), "notes": notes,
                                    "unet_gflop_per_image": flops / 1e9}})
    return rows


# ---------------------------------------------------------------------------- attack pieces

def _best_wall(fn: Callable[[], Any], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


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

    kernel_s = _best_wall(lambda: vote(scores_t, thresholds_t), repeats)
    numpy_s = _best_wall(numpy_vote, repeats)
    return {"n": n, "models": n_models, "kernel_s": kernel_s, "numpy_s": numpy_s, "ratio": numpy_s / kernel_s}


def bench_bag(n: int = 1000, n_models: int = 7, epochs: int = 1, image_size: int = 28, device: str = "cpu") -> dict:
    """Seconds per epoch of the bag of quantile regressors trained as one grouped network and one by one."""
    from . import regress
    from .attack import synthetic_problem

    problem = synthetic_problem(n, image_size=image_size, seed=0)
    targets = np.log(problem.scores)
    seeds = [regress.derive_seed(0, 0, j) for j in range(n_models)]
    plans = regress.bootstrap_plans(n, seeds, 0.1)
    out = {"n": n, "models": n_models, "epochs": epochs, "image_size": image_size}
    for batched in (True, False):
        config = regress.RegressorConfig(epochs=epochs, patience=epochs, batched=batched, device=device)
        started = time.perf_counter()
        regress.fit_bag(problem.images, targets, plans, seeds, [0.01], config)
        out[f"{'batched' if batched else 'loop'}_s_per_epoch"] = (time.perf_counter() - started) / epochs
    out["ratio"] = out["loop_s_per_epoch"] / out["batched_s_per_epoch"]
    return out


# ---------------------------------------------------------------------------- accuracy

def accuracy_check(precisions: Sequence[str] = ("auto",), device: str = "cpu", batch_size: int | None = None,
                   seed: int = 0, n_models: int = 7, tolerance: float = 0.005, method: str = "recommended",
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """The demo audit (pipeline.run_audit, in memory) on reference fp32 scores and on each precision's scores.

    The reference is fp32 with direct convolutions (on a CPU: fast_layers=False), the way
    the plain-PyTorch baseline computes; each entry of `precisions` is scored with the
    scorer's defaults at that precision. Needs the trained demo target. The bag is fitted
    with the same seed each time, so only the scores differ; AUC and TPR@1%FPR of every
    method must agree within `tolerance`. `method`: "recommended" (what `qmia-fast attack`
    uses on the demo), or secmi / loss / pia with their defaults.
    """
    from .models import BUILTIN_TARGET_DIR
    from .pipeline import AttackSpec, AuditSpec, ScoreSpec, run_audit

    if not (BUILTIN_TARGET_DIR / "config.json").is_file():
        raise ConfigError(f"the accuracy check needs the trained demo target in {BUILTIN_TARGET_DIR}; "
                          "train it first (see bench/README.md)")
    if method not in ("recommended", "secmi", "loss", "pia"):
        raise ConfigError(f"method = {method!r} must be recommended, secmi, loss or pia")
    reference = "fp32-direct"
    variants = {reference: {"precision": "fp32", "fast_layers": False if device == "cpu" else None}}
    variants.update({precision: {"precision": precision} for precision in precisions})
    report: dict = {"model": "builtin demo target", "tolerance": tolerance, "reference": reference, "runs": {}}
    scores = {}
    for label, kwargs in variants.items():
        spec = AuditSpec(score=ScoreSpec(method=None if method == "recommended" else method, device=device,
                                         batch_size=batch_size, **kwargs),
                         attack=AttackSpec(n_models=n_models), seed=seed, out=None)
        result = run_audit(spec)
        scores[label] = np.concatenate([result.raw_scores[name] for name in ("members", "public", "holdout")])
        resolved = result.report["config"]["score"]
        report["score"] = {k: v for k, v in resolved.items() if k not in ("precision", "device")}
        report["images"] = int(len(scores[label]))
        rms = rms_per_pixel(scores[label], result.attack.fit_info["image_shape"])
        report["runs"][label] = {
            "precision_resolved": resolved["precision"], "score_seconds": result.report["timings_s"]["score_s"],
            "score_rms_per_pixel": rms,
            # Only a t-error can be a round trip's rounding noise.
            "scores_are_rounding_noise": resolved["method"] == "secmi" and rms < ROUNDING_RMS,
            "metrics": {name: {"auc": entry["auc"], "tpr_at_1%fpr": entry["tpr_at_fpr"]["1%"]}
                        for name, entry in result.report["methods"].items()}}
        log(f"accuracy: {label}: {report['runs'][label]['metrics']}")
    base = report["runs"][reference]["metrics"]
    verdicts = {}
    for label in variants:
        if label == reference:
            continue
        run_metrics = report["runs"][label]["metrics"]
        rel = np.abs(scores[label] - scores[reference]) / np.maximum(np.abs(scores[reference]), 1e-30)
        deltas = {name: {key: abs(run_metrics[name][key] - base[name][key]) for key in base[name]} for name in base}
        verdicts[label] = {"max_rel_score_diff": float(rel.max()), "median_rel_score_diff": float(np.median(rel)),
                           "spearman": _spearman(scores[label], scores[reference]), "deltas": deltas,
                           "within_tolerance": all(d <= tolerance for m in deltas.values() for d in m.values())}
    report["comparison_to_reference"] = verdicts
    report["meaningful"] = not report["runs"][reference]["scores_are_rounding_noise"]
    return report


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (continuous scores: ties are measure-zero, ranks by argsort)."""
    ranks_a = np.empty(len(a)); ranks_a[np.argsort(a, kind="stable")] = np.arange(len(a))
    ranks_b = np.empty(len(b)); ranks_b[np.argsort(b, kind="stable")] = np.arange(len(b))
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
                      "memory_gib": round(props.total_memory / 2**30, 1)}
        env["baseline_cuda_settings"] = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                                         "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                                         "cudnn_benchmark": torch.backends.cudnn.benchmark}
    return env


def run(options: BenchOptions, log: Callable[[str], None] = lambda s: None) -> dict:
    """The whole benchmark as one JSON-serialisable report."""
    if options.threads is not None:
        torch.set_num_threads(int(options.threads))
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA device; use --device cpu")
    started = time.perf_counter()
    report: dict = {"benchmark": "qmia-fast scoring (SecMI t-error)", "options": _options_dict(options),
                    "environment": environment(device)}
    if options.matmul:
        log("matrix-multiply rates")
        report["matmul"] = matmul_rates(device, options.quick)
    rows = bench_scoring(options, log)
    report["scoring"] = [row for row in rows if "model_info" not in row]
    report["models"] = [row["model_info"] for row in rows if "model_info" in row]
    if options.vote:
        log("vote kernel vs numpy")
        report["vote"] = bench_vote(n=200_000 if options.quick else 1_000_000)
    if options.bag:
        log("bag training, batched vs loop")
        report["bag"] = bench_bag(n=300 if options.quick else 1000)
    report["seconds"] = time.perf_counter() - started
    return report


def _options_dict(options: BenchOptions) -> dict:
    return {key: (list(value) if isinstance(value, (list, tuple)) else value)
            for key, value in options.__dict__.items()}


def format_table(report: dict) -> str:
    """The report as a human-readable table."""
    env = report.get("environment", {})
    lines = [f"qmia-fast scoring benchmark: SecMI t-error ({report['options']['t_sec']}, {report['options']['k']}), "
             f"device {env.get('device')}, torch {env.get('torch')}, {env.get('torch_threads')} thread(s), "
             f"CPU {env.get('cpu_model')}, load {env.get('load_average')}"]
    if env.get("gpu"):
        lines.append(f"GPU: {env['gpu']['name']} (sm {env['gpu']['capability']})")
    matmul = report.get("matmul")
    if matmul:
        lines.append(f"matmul rates measured now: fp32 {matmul['fp32_gflops']:.0f} GFLOP/s, "
                     f"bf16 {matmul['bf16_gflops']:.0f} GFLOP/s")
    for info in report.get("models", []):
        lines.append(f"model {info['model']}: {info['description']['parameters'] / 1e6:.2f}M parameters, "
                     f"{info['unet_gflop_per_image']:.2f} GFLOP per UNet call, weights {info['description']['weights']}; "
                     f"baseline: {info['baseline']}; auto -> {info['auto_resolves_to']}"
                     + (f"; {'; '.join(info['notes'])}" if info.get("notes") else ""))
    header = (f"{'model':<8} {'batch':>5} {'variant':<11} {'img/s wall':>10} {'img/s cpu':>9} "
              f"{'ratio wall':>10} {'ratio cpu':>9} {'UNet GFLOP/s':>12} {'max rel diff':>12}")
    lines += ["", header, "-" * len(header)]
    for row in report.get("scoring", []):
        for key, entry in row["results"].items():
            label = key if key == "baseline" else f"{key}" + (f"={entry['precision_resolved']}" if key == "auto" else "")
            ratio_wall = f"{entry['ratio_wall']:.2f}x" if "ratio_wall" in entry else "1"
            ratio_cpu = f"{entry['ratio_cpu']:.2f}x" if "ratio_cpu" in entry else "1"
            diff = f"{entry['max_rel_diff_vs_baseline']:.1e}" if "max_rel_diff_vs_baseline" in entry else "-"
            lines.append(f"{row['model']:<8} {row['batch_size']:>5} {label:<11} {entry['images_per_s_wall']:>10.2f} "
                         f"{entry['images_per_s_cpu']:>9.2f} {ratio_wall:>10} {ratio_cpu:>9} "
                         f"{entry['unet_gflops_wall']:>12.1f} {diff:>12}")
    noisy = sorted({row["model"] for row in report.get("scoring", [])
                    if row.get("score_rms_per_pixel", 1.0) < ROUNDING_RMS})
    if noisy:
        lines.append(f"note: {', '.join(noisy)}: the t-errors are float32 rounding noise (RMS per pixel < "
                     f"{ROUNDING_RMS:g}), so 'max rel diff' compares rounding, not the computation")
    if "vote" in report:
        v = report["vote"]
        lines.append(f"\nvote ({v['n']} x {v['models']}): kernel {v['kernel_s'] * 1e3:.1f} ms, numpy "
                     f"{v['numpy_s'] * 1e3:.1f} ms, {v['ratio']:.1f}x")
    if "bag" in report:
        b = report["bag"]
        lines.append(f"bag training ({b['models']} regressors, {b['n']} images): batched "
                     f"{b['batched_s_per_epoch']:.2f} s/epoch, loop {b['loop_s_per_epoch']:.2f} s/epoch, "
                     f"{b['ratio']:.2f}x")
    return "\n".join(lines)


def format_accuracy(report: dict) -> str:
    """The accuracy check as readable lines."""
    lines = [f"demo attack on {report['images']} images ({report['model']}, training step "
             f"{report.get('training_step')}), score {report.get('score')}, reference {report['reference']}, "
             f"tolerance {report['tolerance']}"]
    for precision, run in report["runs"].items():
        for method, values in run["metrics"].items():
            lines.append(f"  {precision:<11} ({run['precision_resolved']:<4}) {method:<18} AUC {values['auc']:.4f}  "
                         f"TPR@1%FPR {values['tpr_at_1%fpr']:.4f}   scoring {run['score_seconds']:.0f} s")
    if not report.get("meaningful", True):
        lines.append(f"WARNING: the reference t-errors are float32 rounding noise (RMS per pixel "
                     f"{report['runs'][report['reference']]['score_rms_per_pixel']:.1e} < {ROUNDING_RMS:g}): the "
                     "target's eps barely changes over the round trip (under-trained?); this check says nothing")
    for precision, verdict in report["comparison_to_reference"].items():
        worst = max(d for m in verdict["deltas"].values() for d in m.values())
        lines.append(f"{precision} vs {report['reference']}: largest metric change {worst:.4f} "
                     f"({'within' if verdict['within_tolerance'] else 'OUTSIDE'} {report['tolerance']}); "
                     f"scores differ by {verdict['median_rel_score_diff']:.1e} (median) / "
                     f"{verdict['max_rel_score_diff']:.1e} (max) relative; Spearman "
                     f"{verdict.get('spearman', float('nan')):.6f}")
    return "\n".join(lines)
