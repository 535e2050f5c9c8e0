"""What `qmia-fast bench` measures: SecMI's t-error in a plain-PyTorch loop against qmia-fast's scorer, in one process.

Nothing here asserts a timing: it measures, records the conditions (threads, load, devices,
backend settings) and reports ratios measured in the same run on the same model and
images. Harnesses that only bench/ uses (kernel profiles, the precision table, the GPU
check, quantile-bag timing) live in bench/.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..plan import resolve_plan
from ..precision import PRECISIONS, call_precisions
from .families import FAMILY_NAMES, DiffusersLoop, benchmark_labels
from .models import SecmiBaseline, build_model, unet_flops_per_image
from .timing import _load_average, _time_job, best_wall, environment, matmul_rates, peak_fraction, rms_per_pixel

# What each device times when no variants are named: the precisions a user can pick there,
# and on CUDA the fused GroupNorm path on and off (FUSED_BY_DEFAULT["cuda"] waits on it).
DEFAULT_VARIANTS = {"cpu": ("auto", "fp32", "bf16"),
                    "cuda": ("auto", "fp16:fused", "fp16:unfused", "tf32", "mixed", "mixed-tf32", "fp32", "bf16")}


FUSED_SUFFIXES = {"fused": True, "unfused": False}


@dataclass
class BenchOptions:
    """What to measure; the defaults are the full run, `quick_defaults()` a few-minute one."""

    models: Sequence[str] = ("demo", "cifar10")
    batch_sizes: dict = field(default_factory=lambda: {"demo": [16, 32, 64, 128, 256, 512, 1024],
                                                         "cifar10": [16, 32], "latent": [16], "dit": [16]})
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
        options = cls(batch_sizes={"demo": [32], "cifar10": [16], "latent": [8], "dit": [8]}, rounds=2, quick=True)
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


def _images_for(model, n: int, seed: int = 0) -> np.ndarray:
    from ..data import load_data

    if getattr(model, "format", "") == "qmia":
        # The trained demo target: score the demo images themselves, repeated to n.
        images = load_data("builtin").images
        return np.ascontiguousarray(np.resize(images, (n, *images.shape[1:])))
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *model.image_shape), dtype=np.uint8)


def _runs_as(kwargs: dict, device: torch.device) -> tuple:
    """(resolved precision, fused, fast layers) a variant runs as, by the rules that need no model (its plan may refine them)."""
    from ..models.unet import FUSED_BY_DEFAULT
    from ..plan import resolve_precision

    fused = kwargs.get("fused")
    precision = resolve_precision(kwargs["precision"], device, method="secmi")
    return (precision, bool(FUSED_BY_DEFAULT.get(device.type, False)) if fused is None else fused,
            kwargs.get("fast_layers"))


def planned_runs_as(model, device: torch.device, unet_batch: int | None, log=None) -> Callable[[dict], tuple]:
    """runs_as for scoring_variants from `model`'s run plan: (precision, fused, fast layers, channels_last)."""
    def runs_as(kwargs: dict) -> tuple:
        plan = resolve_plan(model, "secmi", device=device, unet_batch=unet_batch, log=log,
                            **{key: kwargs[key] for key in ("precision", "fused", "fast_layers", "channels_last")
                               if key in kwargs})
        return plan.precision, plan.fused, plan.fast_layers, plan.channels_last

    return runs_as


def scoring_variants(specs: Sequence[str], device: torch.device, *, skip_emulated_bf16: bool = False,
                     direct_layers: bool = False, runs_as: Callable[[dict], tuple] | None = None) -> tuple[dict, list]:
    """{label: Scorer keyword arguments} for the variants to time, and notes on what was left out.

    'auto' is timed under its own label and a variant that runs as an earlier one (what
    `runs_as(kwargs)` says: by default the rules that need no model; scoring_rows passes each
    model's run plan) is not timed twice; skip_emulated_bf16 leaves out the bf16 variants where
    the CPU emulates bf16; direct_layers adds fp32-direct (CPU only: fp32 on channels_last with
    torch's convolutions instead of the Winograd layers).
    """
    from ..machine import cpu_has_fast_bf16

    runs_as = runs_as or (lambda kwargs: _runs_as(kwargs, device))
    variants, notes, seen = {}, [], {}
    ordered = sorted(specs, key=lambda spec: spec != "auto")  # auto first: the others are compared with it
    for spec in ordered:
        kwargs = parse_variant(spec)
        resolved = runs_as(kwargs)
        if resolved in seen:
            notes.append(f"{spec}: the same as {seen[resolved]} here")
            continue
        if (skip_emulated_bf16 and resolved[0] in ("bf16", "mixed") and device.type == "cpu"
                and not cpu_has_fast_bf16()):
            notes.append(f"{spec}: skipped, this CPU emulates bf16 (see the demo model's row)")
            continue
        seen[resolved] = spec
        variants[spec] = kwargs
    if direct_layers and device.type == "cpu":
        variants["fp32-direct"] = {"precision": "fp32", "fast_layers": False, "channels_last": True}
    return variants, notes


def _warm_up(device: torch.device, baselines: dict, scorers: dict, batch: np.ndarray, conditions=None) -> None:
    """Untimed first runs on one batch: on a GPU, or for a latent model, a whole batch per path (CUDA graph capture,
    cuDNN plans, the VAE); on a CPU otherwise one UNet call per path (oneDNN primitive creation), all it needs."""
    latent = any(getattr(s.model, "latent", None) is not None for s in scorers.values())
    if device.type == "cuda" or latent:
        for baseline in baselines.values():
            baseline.score(batch, len(batch))
        for scorer in scorers.values():
            scorer.score(batch, conditions=conditions)
        return
    x = torch.from_numpy(batch).float() / 255.0 * 2.0 - 1.0
    for baseline in baselines.values():
        baseline._step(x, 0, baseline.k)
    for scorer in scorers.values():
        with torch.inference_mode():
            scorer.pred(scorer._prepare(torch.from_numpy(batch), "pixels"), 0, None, scorer.inversion)


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
    from ..scoring import Scorer

    device = torch.device(options.device)
    per_job = options.batches_per_job or (4 if device.type == "cuda" else 1)
    specs = options.precisions or DEFAULT_VARIANTS.get(device.type, DEFAULT_VARIANTS["cpu"])
    calls = options.t_sec // options.k + 1
    for name in options.models:
        model, description = build_model(name, device)
        flops = unet_flops_per_image(model.to(device), device)
        family = name in FAMILY_NAMES
        if family:  # the plain-diffusers loop a user would write for this model
            baselines = {"baseline": DiffusersLoop(model, device, options.t_sec, options.k)}
        else:
            baselines = {"baseline": SecmiBaseline(model, device, options.t_sec, options.k)}
        if device.type == "cuda" and not family:
            baselines["baseline-fp32"] = SecmiBaseline(model, device, options.t_sec, options.k, strict=True)
        planned = planned_runs_as(model, device, (options.batch_sizes.get(name) or [None])[0], log)
        variants, notes = scoring_variants(specs, device, skip_emulated_bf16=name != "demo" and not options.slow_bf16,
                                           direct_layers=options.direct_layers, runs_as=planned)
        yield "model", {"model": name, "description": description, "baseline": baselines["baseline"].description,
                        "baseline_tf32": {key: b.tf32 for key, b in baselines.items()},
                        "auto_resolves_to": planned({"precision": "auto"})[0], "notes": notes,
                        "variants": variants, "unet_gflop_per_image": flops / 1e9}
        for batch in options.batch_sizes.get(name, []):
            images = _images_for(model, batch * per_job)
            conditions = benchmark_labels(len(images)) if model.conditioning is not None else None

            def make_scorer(kwargs: dict) -> Scorer:
                return Scorer(copy.deepcopy(model), "secmi", t_sec=options.t_sec, k=options.k, batch_size=batch,
                              unet_batch=batch, device=device, **kwargs)

            scorers = {label: make_scorer(kwargs) for label, kwargs in variants.items()}
            jobs = {key: (lambda b: lambda: b.score(images, batch))(b) for key, b in baselines.items()}
            jobs.update({label: (lambda s: lambda: s.score(images, conditions=conditions))(s)
                         for label, s in scorers.items()})
            log(f"{name} batch {batch}: warm-up")
            _warm_up(device, baselines, scorers, images[:batch], None if conditions is None else conditions[:batch])
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
            if family:  # the VAE encode, timed on its own (both paths encode each image once)
                encode_base = _time_job(lambda: baselines["baseline"].encode(images), device)[0]
                encode_ours = _time_job(lambda: next(iter(scorers.values())).encode(images), device)[0]
                row["vae_encode_s_per_image"] = {"baseline": encode_base / len(images),
                                                 "qmia": encode_ours / len(images)}
            if on_case is not None:
                row.update(on_case({"model_name": name, "model": model, "device": device, "batch": batch,
                                    "images": images, "baselines": baselines, "scorers": scorers,
                                    "variants": variants, "make_scorer": make_scorer}) or {})
            yield "row", row


def bench_vote(n: int = 1_000_000, n_models: int = 7, repeats: int = 3) -> dict:
    """The compiled vote kernel against the same majority vote and mean margin in numpy."""
    from ..kernels import vote

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
