"""Precision policy for the UNet calls: resolve 'auto', enter autocast, keep fp32 exact (TF32 off)."""
from __future__ import annotations

import contextlib
import functools
import time

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "mixed")
# "mixed" (secmi only): SecMI's t_sec/k - 1 inversion calls in bf16, the two round-trip
# calls whose difference is the t-error in fp32. Measured on the demo target (200 members,
# 200 holdout, 2026-11-28): all-bf16 t-errors were 20% (median) off fp32 with Spearman
# 0.984 and TPR at 1% FPR fell from 8.0% to 2.5%; mixed was 0.46% off, Spearman 0.9995,
# AUC 0.6112 against 0.6104 and the same TPR, 8.0% (bench/bench_secmi_precision.py).
MIXED_INVERSION = "bf16"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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

    Without these, oneDNN emulates bf16: on a 2-core AVX2 EPYC a bf16 matrix multiply ran
    ~60x and a UNet ~5x slower than in fp32 (bench/README.md), so 'auto' keeps fp32 there
    without measuring.
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
    """Map 'auto' to the fastest precision whose attack results match fp32 on this device.

    Where bf16 is fast (CUDA with bf16; a CPU with bf16 instructions on which a probe
    convolution runs at least 1.15x faster in bf16 than in fp32, i.e. AMX): 'mixed' for
    the secmi method (a t-error is a small difference of two reconstructions, which bf16
    rounding swamps; see MIXED_INVERSION), bf16 for loss and pia (and when no method is
    given). A GPU without bf16: fp16 for loss and pia, fp32 for secmi. Elsewhere fp32.
    `qmia-fast bench --accuracy` compares the demo attack on each precision with fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            return "fp32" if method == "secmi" else "fp16"
        fast_bf16 = True
    else:
        speedup = cpu_bf16_speedup()
        fast_bf16 = speedup is not None and speedup >= _BF16_MIN_SPEEDUP
    if not fast_bf16:
        return "fp32"
    return "mixed" if method == "secmi" else "bf16"


def autocast_context(precision: str, device: torch.device):
    """Autocast for the UNet call at the given (resolved) precision; a no-op for fp32.

    The weight-cast cache is off: each weight is used once per UNet call, so it saves
    nothing, and cast copies cached across a CUDA graph's capture boundary are what
    torch's graph documentation warns about.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "mixed":
        raise ConfigError("precision 'mixed' is resolved per UNet call; pass bf16 or fp32 here")
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision], cache_enabled=False)


@contextlib.contextmanager
def exact_fp32_matmul(enabled: bool = True):
    """Turn TF32 off on CUDA for the duration, so fp32 means fp32 (restores the user's setting)."""
    if not enabled or not torch.cuda.is_available():
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
