"""The benchmark's clocks and yardsticks: timed jobs, matrix-multiply rates, share of peak, the conditions of a run."""
from __future__ import annotations

import math
import os
import platform
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .models import cuda_tf32

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rates(device: torch.device, quick: bool = False) -> dict:
    """GFLOP/s of square matrix multiplies on this device, measured now: {precision}_gflops and {precision}_size.

    A CPU: fp32 and bf16 (1024; 512 for bf16 where the CPU emulates it). CUDA: fp32 with
    TF32 off, tf32 (float32 inputs, TF32 on), bf16 and fp16 (8192; 4096 with quick).
    """
    from ..machine import cpu_has_fast_bf16

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


def best_wall(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest wall time of `repeats` runs of fn (on a shared machine the minimum is the least disturbed)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def environment(device: torch.device) -> dict:
    """The conditions of a run: versions, threads, CPU features, GPU, load."""
    from ..machine import cpu_has_fast_bf16, cpu_model_and_flags

    flags = cpu_model_and_flags()[1]
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


# Below this RMS per-pixel difference a t-error is float32 rounding noise (about 8 ulps of 1.0):
# the model's eps hardly moves between t_sec - k and t_sec, so the round trip is exact up to
# rounding, and implementations that round differently give unrelated scores.
ROUNDING_RMS = 1e-6


def rms_per_pixel(scores: np.ndarray, image_shape) -> float:
    """sqrt(median score / pixels): the typical per-pixel size of the t-error's difference."""
    return float(np.sqrt(np.median(scores) / float(np.prod(image_shape))))
