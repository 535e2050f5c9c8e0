"""What this installation is: versions, how the compiled core was built, threads, GPUs and CPU features."""
from __future__ import annotations

import importlib
import os
import platform
from typing import Any, Dict, List

# CPU features that matter for the kernels and for bfloat16 speed (x86 /proc/cpuinfo names).
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

_OPENMP_VERSIONS = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0",
                    202011: "5.1", 202111: "5.2"}


def _cpu_features() -> Dict[str, Any]:
    from .machine import cpu_has_fast_bf16, cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    features: Dict[str, Any] = {"model": model, "logical_cores": os.cpu_count(),
                                "machine": platform.machine()}
    try:
        import torch

        features["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch or no torch: report what we can
        features["torch_capability"] = None
    features["flags"] = {name: name in flags for name in CPU_FLAGS}
    if platform.machine().lower() in ("aarch64", "arm64"):
        features["flags"]["bf16"] = "bf16" in flags
    # Without native bf16 dot products (AVX512-BF16, AMX or ARM BF16), bfloat16 math on the
    # CPU is converted to float32 and is rarely faster than float32 itself.
    features["bf16_fast_path_likely"] = cpu_has_fast_bf16()
    return features


def _compiled_build_info(name: str) -> tuple[Dict[str, Any] | None, str | None]:
    """The compiled module `name`'s build_info() as a dict, or None and why the module did not import."""
    try:
        module = importlib.import_module(f"{__package__}.{name}")
    except ImportError as exc:
        return None, str(exc)
    return dict(module.build_info()), None


def _cpu_module() -> Dict[str, Any]:
    info, error = _compiled_build_info("_cpu")
    if info is None:
        return {"built": False, "error": error}
    openmp = info.get("openmp")
    info["openmp_version"] = _OPENMP_VERSIONS.get(openmp, str(openmp)) if openmp else None
    info["built"] = True
    return info


def _cuda_module() -> Dict[str, Any]:
    info, error = _compiled_build_info("_cuda")
    if info is None:
        return {"built": False, "error": error}
    info["built"] = True
    archs = str(info.get("cuda_archs", ""))
    info["archs"] = [a for a in archs.replace(",", ";").split(";") if a]
    return info


def _cuda_runtime() -> Dict[str, Any]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return {"available": False}
    runtime: Dict[str, Any] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    devices: List[Dict[str, Any]] = []
    if runtime["available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1),
                            "multiprocessors": props.multi_processor_count})
    runtime["device_count"] = len(devices)
    runtime["devices"] = devices
    return runtime


def build_info() -> Dict[str, Any]:
    """A JSON-serialisable description of this installation, for `qmia-fast info` and every report.

    Keys: qmia_fast, python, platform, torch, numpy (versions); cpu_module (built, compiler,
    compile flags, build type, OpenMP); cuda_module (built, archs, CUDA toolkit version it was
    built with, runtime/driver versions); cuda_runtime (torch.cuda.is_available(), devices);
    threads (OpenMP max threads, torch threads); cpu (model, torch's CPU capability, feature
    flags, whether a bfloat16 fast path is likely).
    """
    from . import __version__

    info: Dict[str, Any] = {
        "qmia_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        torch_threads = torch.get_num_threads()
        interop_threads = torch.get_num_interop_threads()
    except ImportError:  # pragma: no cover
        info["torch"] = None
        torch_threads = interop_threads = None
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        info["numpy"] = None
    info["cpu_module"] = _cpu_module()
    info["cuda_module"] = _cuda_module()
    info["cuda_runtime"] = _cuda_runtime()
    info["threads"] = {
        "openmp_max_threads": info["cpu_module"].get("openmp_max_threads"),
        "torch_threads": torch_threads,
        "torch_interop_threads": interop_threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    info["cpu"] = _cpu_features()
    return info
