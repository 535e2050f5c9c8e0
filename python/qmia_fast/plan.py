"""RunPlan: how a run executes (device, precision per call, micro-batches, layout, fused layers, graphs, threads, fit device), resolved once and recorded."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from . import machine, plan_probe
from .errors import ConfigError
from .precision import DEFAULT_PRECISION, PRECISIONS, call_precisions
from .runtime import check_threads, resolve_device, torch_threads

DEFAULT_UNET_BATCH = {"cpu": 64, "cuda": 256}
# bf16 (or SecMI's mixed variant) must beat the fastest float32 variant by this factor before
# 'auto' gives up float32's exactness for it.
MIN_HALF_SPEEDUP = 1.15
# The smallest micro-batch of the ladder: below it torch's CPU kernels switch algorithms
# (bench/README.md, "Micro-batches"), so a smaller size would not give the same bits.
LADDER_MIN = 8
# Share of the machine's memory (CPU: MemTotal; CUDA: the device's total) one micro-batch may take.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class RunPlan:
    """Everything about how a run executes, decided once (resolve_plan) and read by the scorer, the fit and the report.

    precision: the resolved variant; inversion / round_trip: the call precisions of SecMI's
    inversion (and of every call of the other methods) and of its two round-trip calls.
    micro_batches: the sizes a micro-batch may run at, ascending, the last = unet_batch; more
    than one only where a measurement on this machine showed every size gives a sample the
    same bits (then a few images cost a small micro-batch, not a padded full one).
    decided: how each setting was chosen (the user, the device, a measurement, the CPU's flags).
    """

    device: str
    precision: str
    inversion: str
    round_trip: str
    unet_batch: int
    micro_batches: tuple[int, ...]
    batch_size: int
    channels_last: bool
    fast_layers: bool
    fused: bool | None
    cuda_graphs: bool
    compile: bool
    threads: int | None
    fit_threads: int | None
    fit_device: str
    machine: dict = field(default_factory=dict)
    decided: dict = field(default_factory=dict)

    def bit_identity(self) -> dict[str, Any]:
        """The settings that can change a score's bits (a resumed run must match them): not the batch size, not
        threads. The machine they ran on is part of a run's identity too (pipeline.identity.machine_identity)."""
        return {"device_type": torch.device(self.device).type, "precision": self.precision,
                "unet_batch": self.unet_batch, "micro_batches": list(self.micro_batches),
                "channels_last": self.channels_last, "fast_layers": self.fast_layers, "fused": self.fused,
                "compile": self.compile}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["micro_batches"] = list(self.micro_batches)
        return out

    def describe(self) -> str:
        """One line for the start of a run."""
        ladder = "" if len(self.micro_batches) == 1 else f" (small jobs: {'/'.join(map(str, self.micro_batches[:-1]))})"
        layers = ", Winograd convolutions" if self.fast_layers else ""
        fused = "" if self.fused is None else (", fused GroupNorm" if self.fused else ", plain GroupNorm")
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        threads = ("torch's threads" if self.threads is None
                   else f"{self.threads} thread{'' if self.threads == 1 else 's'}")
        return (f"plan: {self.device}, {self.precision} ({self.decided.get('precision', '')}), micro-batch "
                f"{self.unet_batch}{ladder}, batch {self.batch_size}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}{layers}{fused}{graphs}, {threads}; "
                f"fit on {self.fit_device}")


def resolve_precision(precision: str, device: torch.device, method: str | None = None) -> str:
    """The precision variant without a model to measure: explicit choices mapped to the device, 'auto' by rule.

    On a CPU, which has no TF32, tf32 runs as fp32 and mixed-tf32 as mixed. 'auto': fp16 on
    CUDA (the H200 measurements in README "Precision"); on a CPU the CPU-flags rule (bf16
    hardware: mixed for secmi, bf16 otherwise; else fp32). resolve_plan refines the CPU rule by
    a cached measurement on the model being scored.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        precision = {"tf32": "fp32", "mixed-tf32": "mixed"}.get(precision, precision)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if machine.cpu_has_fast_bf16():
        return "mixed" if method == "secmi" else "bf16"
    return "fp32"


def resolve_plan(model, method: str, *, device=None, precision: str = DEFAULT_PRECISION, unet_batch: int | None = None,
                 batch_size: int | None = None, threads: int | None = None, fast_layers: bool | None = None,
                 fused: bool | None = None, channels_last: bool | None = None, cuda_graphs: bool = True,
                 compile: bool = False, fit_device: str | None = None, fit_threads: int | None = None,
                 calls_per_image: int = 11, log: Callable[[str], None] | None = None) -> RunPlan:
    """The one place a run's execution is decided; see RunPlan. Deterministic for a machine and a model architecture.

    On a CPU, 'auto' (and unset fast_layers) come from a measurement on this model's
    architecture at this micro-batch (not per thread count), taken the first time and cached per
    machine (plan_probe.cache_path(); QMIA_FAST_PLAN_CACHE=off uses the CPU-flags rule
    instead), so the same command on the same machine always runs the same way and gives
    the same bits. 'auto' is the fastest of fp32 with torch's convolutions, fp32 with our
    Winograd layers, and (where it beats them by MIN_HALF_SPEEDUP and the method's precision
    rule allows it) bf16 for loss/PIA or mixed for SecMI.
    """
    log = log or (lambda text: None)
    dev = resolve_device(device, default="auto")
    threads = check_threads(threads)
    fit_threads = check_threads(fit_threads, "fit_threads") if fit_threads is not None else threads
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    for name, value in (("fast_layers", fast_layers), ("channels_last", channels_last), ("fused", fused)):
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{name} = {value!r} must be True, False or None (decided by the plan)")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size = {batch_size!r} must be a positive integer (or omitted for the default)")
    if unet_batch is not None and (isinstance(unet_batch, bool) or not isinstance(unet_batch, int) or unet_batch < 1):
        raise ConfigError(f"unet_batch = {unet_batch!r} must be a positive integer (or omitted for the default)")
    decided: dict[str, str] = {}
    micro_limit = _micro_batch_limit(model, dev, threads)
    unet_batch = _unet_batch(unet_batch, dev, micro_limit, decided)
    batch_size = -(-(batch_size or unet_batch) // unet_batch) * unet_batch

    resolved = resolve_precision(precision, dev, method)
    decided["precision"] = "asked for" if precision != "auto" else (
        "CUDA: fp16 holds the precision rule at the tensor cores' half rate" if dev.type == "cuda"
        else "CPU flags rule")
    ladder_ok = False
    if dev.type == "cpu":
        entry, where = _cpu_measurement(model, unet_batch, threads, log)
        if entry is not None:
            if precision == "auto":
                resolved = _fastest(entry, method, calls_per_image)
                decided["precision"] = f"measured on this machine ({entry.get('measured_utc', '?')}; cached in {where})"
            if fast_layers is None and channels_last is None and resolved == "fp32":
                best = _fastest_fp32(entry)
                fast_layers, channels_last = best == "fp32-winograd", best != "fp32"
                decided["fast_layers"] = decided["channels_last"] = f"measured ({best} fastest)"
            used = {"fp32": "fp32-winograd" if fast_layers else ("fp32-nhwc" if channels_last or resolved != "fp32"
                                                                  else "fp32"), "bf16": "bf16"}
            calls = set(call_precisions(resolved))
            ladder_ok = all(entry["micro_batch_invariant"].get(used[c], False) for c in calls if c in used)
            decided["micro_batches"] = "measured: same bits at every size" if ladder_ok else "padded (measured)"
        else:
            decided["micro_batches"] = "padded (no measurement: plan cache off)"
    if fast_layers is None:
        fast_layers = (dev.type == "cpu" and resolved == "fp32" and channels_last is not False
                       and not machine.cpu_has_fast_bf16())
        decided.setdefault("fast_layers", "CPU flags rule" if dev.type == "cpu" and resolved == "fp32"
                           else f"not used ({dev.type}, {resolved}: the Winograd layers are CPU float32 only)")
    if fast_layers and (dev.type != "cpu" or resolved != "fp32"):
        raise ConfigError("fast_layers (Winograd convolutions) applies to CPU scoring at fp32 only; leave it unset "
                          "elsewhere")
    if compile and fast_layers:
        fast_layers = False  # torch.compile traces torch's own convolutions
    if fast_layers:
        channels_last = True  # the Winograd layers work on NHWC memory
    if channels_last is None:
        channels_last = dev.type == "cuda" or resolved != "fp32"
    fused = _fused(model, fused, dev, channels_last)
    inversion, round_trip = call_precisions(resolved)
    rungs = _ladder(unet_batch) if ladder_ok else ()
    return RunPlan(device=str(dev), precision=resolved, inversion=inversion, round_trip=round_trip,
                   unet_batch=unet_batch, micro_batches=(*rungs, unet_batch), batch_size=batch_size,
                   channels_last=bool(channels_last), fast_layers=bool(fast_layers), fused=fused,
                   cuda_graphs=bool(cuda_graphs) and dev.type == "cuda", compile=bool(compile), threads=threads,
                   fit_threads=fit_threads, fit_device=fit_device or ("cuda" if dev.type == "cuda" else "cpu"),
                   machine=machine.describe(), decided=decided)


def _fastest_fp32(entry: dict) -> str:
    seconds = entry["seconds_per_image_call"]
    return min(("fp32", "fp32-nhwc", "fp32-winograd"), key=lambda name: seconds[name])


def _fastest(entry: dict, method: str, calls: int) -> str:
    seconds = entry["seconds_per_image_call"]
    fp32 = seconds[_fastest_fp32(entry)]
    bf16 = seconds.get("bf16")
    if bf16 is None:
        return "fp32"
    if method == "secmi":
        # SecMI's t-error fails the precision rule in bf16 everywhere; mixed keeps the two round-trip
        # calls (which run torch's convolutions in float32) exact.
        calls = max(int(calls), 2)
        half = (calls - 2) * bf16 + 2 * seconds["fp32-nhwc"]
        return "mixed" if calls * fp32 >= MIN_HALF_SPEEDUP * half else "fp32"
    return "bf16" if fp32 >= MIN_HALF_SPEEDUP * bf16 else "fp32"


def _cpu_measurement(model, unet_batch: int, threads: int | None, log) -> tuple[dict | None, str | None]:
    """This architecture's measurement at this micro-batch and thread count: cached, or taken now and cached."""
    if plan_probe.cache_path() is None:
        return None, None
    # Not keyed by the thread count: a score's bits must not depend on --threads, so neither may the variant.
    key = plan_probe.entry_key("variants", model, unet_batch=unet_batch)
    entry = plan_probe.cached(key)
    if entry is not None:
        return entry, str(plan_probe.cache_path())
    variants = [v for v in plan_probe.VARIANTS if v[1] != "bf16" or machine.cpu_has_fast_bf16()]
    log(f"measuring how this model runs fastest on this CPU (once per machine; cached in {plan_probe.cache_path()})")
    from .scoring.networks import Networks

    def build(call: str, fast: bool, layout: bool):
        return Networks(model, (call,), device=torch.device("cpu"), channels_last=layout, fast_layers=fast,
                        fused=_fused(model, None, torch.device("cpu"), layout))

    import datetime

    with torch_threads(threads):
        entry = plan_probe.measure_variants(model, unet_batch, _ladder(unet_batch), build, variants)
    entry["measured_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry["threads"] = threads or torch.get_num_threads()
    entry["model"] = f"{type(getattr(model, 'net', model)).__name__} on {'x'.join(map(str, model.input_shape))}"
    entry["unet_batch"] = unet_batch
    where = plan_probe.store(key, entry)
    model.to(memory_format=torch.contiguous_format)
    if where is None:
        return None, None  # an unwritable cache: the flags rule, so that every process decides alike
    return entry, str(where)


def _ladder(unet_batch: int) -> tuple[int, ...]:
    """Powers of two from LADDER_MIN below unet_batch."""
    sizes, size = [], LADDER_MIN
    while size < unet_batch:
        sizes.append(size)
        size *= 2
    return tuple(sizes)


def _fused(model, fused: bool | None, dev: torch.device, channels_last: bool) -> bool | None:
    from .models.unet import FUSED_BY_DEFAULT
    from .scoring.networks import has_fusable_layers

    if not has_fusable_layers(model):
        return None
    if fused is not None:
        return fused
    return bool(FUSED_BY_DEFAULT.get(dev.type, False) and channels_last)


def _total_memory(dev: torch.device) -> int | None:
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _micro_batch_limit(model, dev: torch.device, threads: int | None) -> int | None:
    """The largest micro-batch whose activations fit MEMORY_SHARE of the machine (None: unknown).

    Its one probing forward pass runs at the run's thread count, like every other call of the run."""
    total = _total_memory(dev)
    if total is None or not hasattr(model, "input_shape"):
        return None
    key = plan_probe.entry_key("bytes", model, device=dev.type)
    per_image = _BYTES_SEEN.get(key)
    if per_image is None:
        entry = plan_probe.cached(key)
        per_image = entry.get("bytes_per_image") if entry else None
        if not isinstance(per_image, int) or per_image <= 0:
            with torch_threads(threads):
                per_image = plan_probe.bytes_per_image(model.to(dev), dev)
            plan_probe.store(key, {"bytes_per_image": per_image})
        _BYTES_SEEN[key] = per_image
    return max(1, int(total * MEMORY_SHARE) // per_image)


# Per process as well as on disk: the memory bound is needed even where the plan cache is off.
_BYTES_SEEN: dict[str, int] = {}


def _unet_batch(unet_batch, dev: torch.device, limit: int | None, decided: dict) -> int:
    if unet_batch is not None:
        if limit is not None and unet_batch > limit:
            raise ConfigError(f"unet_batch = {unet_batch} does not fit this machine's memory (at most {limit} images "
                              f"per UNet call for this model on {dev.type}); use --unet-batch {min(limit, 64)} or less")
        decided["unet_batch"] = "asked for"
        return unet_batch
    default = DEFAULT_UNET_BATCH.get(dev.type, 64)
    if limit is not None and limit < default:
        decided["unet_batch"] = f"memory: at most {limit} images per call fit"
        return limit
    decided["unet_batch"] = "default"
    return default
