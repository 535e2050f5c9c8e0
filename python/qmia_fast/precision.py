"""Precision policy for the UNet calls: the variants, what 'auto' resolves to, autocast and TF32 per call, resident low-precision weights."""
from __future__ import annotations

import contextlib
import copy
import functools
import time

import torch
from torch import nn

from .errors import ConfigError

# What a user may ask for. fp32 is strict float32 (TF32 off on GPUs); tf32 lets CUDA's
# tensor cores round matrix inputs to TF32; bf16 and fp16 run the UNet under autocast with
# resident weights; the mixed variants (secmi only) run SecMI's inversion in bf16 and the
# two round-trip calls, whose difference is the t-error, in fp32 or TF32.
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16", "mixed", "mixed-tf32")
# What one UNet call runs in.
CALL_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# (inversion, round trip) of the mixed variants.
MIXED_PLANS = {"mixed": ("bf16", "fp32"), "mixed-tf32": ("bf16", "tf32")}
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX512-BF16).

    Without these, oneDNN emulates bf16 and is several times slower than fp32
    (bench/README.md), so 'auto' keeps fp32 there without measuring.
    """
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


# bf16 must beat fp32 by this factor on the probe before 'auto' picks it on a CPU.
_BF16_MIN_SPEEDUP = 1.15


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float | None:
    """fp32 time / bf16-autocast time of a UNet-sized 3x3 convolution on this CPU, measured once per process.

    None where the CPU has no bf16 instructions (not worth measuring: emulated bf16 is
    always slower). The probe is a 128-channel 16 x 16 convolution of 8 images in
    channels_last, best of 3 after a warm-up: tens of milliseconds.
    """
    if not cpu_has_fast_bf16():
        return None
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = torch.randn(8, 128, 16, 16).contiguous(memory_format=torch.channels_last)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    with torch.inference_mode():
        fp32 = best(lambda: conv(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = best(lambda: conv(x))
    return fp32 / max(bf16, 1e-12)


def resolve_precision(precision: str, device: torch.device, method: str | None = None) -> str:
    """The precision a scorer runs at on `device`: 'auto' resolved, and CUDA-only variants mapped on a CPU.

    auto on CUDA: fp16 for every method. SecMI's t-error is a small difference of two
    reconstructions: against strict fp32 on the trained demo target, fp16 in every call
    stayed within the rule 'auto' must keep (median relative difference < 1%, Spearman >=
    0.999, marginal AUC within 0.005), as did TF32, while bf16 in every call did not
    (README, "Precision"); fp16 runs at the tensor cores' half-precision rate.
    auto on a CPU: where a probe convolution runs at least 1.15x faster in bf16 (AMX or
    AVX512-BF16), 'mixed' for secmi and bf16 for loss and pia; elsewhere fp32.
    On a CPU, which has no TF32, tf32 runs as fp32 and mixed-tf32 as mixed.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision == "tf32":
            return "fp32"
        if precision == "mixed-tf32":
            return "mixed"
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    speedup = cpu_bf16_speedup()
    if speedup is None or speedup < _BF16_MIN_SPEEDUP:
        return "fp32"
    return "mixed" if method == "secmi" else "bf16"


def call_precisions(precision: str) -> tuple[str, str]:
    """(precision of SecMI's inversion calls, precision of its two round-trip calls) for a resolved precision.

    For the other methods every call runs at the first one.
    """
    if precision in MIXED_PLANS:
        return MIXED_PLANS[precision]
    if precision not in CALL_PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is not resolved; use one of {', '.join(CALL_PRECISIONS)}")
    return precision, precision


def autocast_context(call_precision: str, device: torch.device):
    """Autocast for a UNet call at bf16 or fp16; a no-op for fp32 and tf32.

    The weight-cast cache is off: the weights that matter are resident in the call's dtype
    already (resident_weights), and cast copies cached across a CUDA graph's capture
    boundary are what torch's graph documentation warns about.
    """
    if call_precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    if call_precision not in HALF_DTYPES:
        raise ConfigError(f"precision {call_precision!r} is resolved per UNet call; pass one of "
                          f"{', '.join(CALL_PRECISIONS)} here")
    return torch.autocast(device_type=device.type, dtype=HALF_DTYPES[call_precision], cache_enabled=False)


@contextlib.contextmanager
def matmul_precision(call_precision: str):
    """TF32 on for 'tf32' calls and off for every other (fp32 means fp32); restores the user's setting.

    A no-op where CUDA is unavailable. Inside a CUDA graph capture the setting is read when
    each kernel is chosen, i.e. at capture time.
    """
    if not torch.cuda.is_available():
        yield
        return
    allow = call_precision == "tf32"
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


# Layers whose weights autocast would cast to the half dtype at every call.
_CAST_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def resident_weights(model: nn.Module, call_precision: str) -> nn.Module | None:
    """A copy of `model` whose convolution and linear weights are stored in the call's half dtype, or None.

    Under autocast a convolution casts its float32 weight to the half dtype on every call
    (with round-to-nearest, as Tensor.to does); with the weight already in that dtype the
    cast is skipped, so this copy gives bit-identical outputs without the per-call casts.
    Every other parameter (GroupNorm's, embeddings) stays float32, as autocast would use it.
    None for fp32/tf32 calls and for TorchScript modules, whose parameters cannot be swapped
    safely; those run under plain autocast.
    """
    if call_precision not in HALF_DTYPES or isinstance(model, torch.jit.ScriptModule):
        return None
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return None
    dtype = HALF_DTYPES[call_precision]
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for module in copied.modules():
            if isinstance(module, _CAST_LAYERS):
                for name, param in list(module.named_parameters(recurse=False)):
                    if param.dtype == torch.float32:
                        setattr(module, name, nn.Parameter(param.to(dtype), requires_grad=False))
    return copied.eval()
