"""What machine a run executes on (CPU model and the ISA flags that change kernels, torch build): for run plans and run identities."""
from __future__ import annotations

import functools
import platform
from typing import Any

# ISA features that decide which kernels oneDNN, MKL and our core run, and so a score's last bits.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of /proc/cpuinfo; ('unknown', {}) where it cannot be read."""
    model, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX-BF16, AVX512-BF16 or ARM BF16); elsewhere oneDNN emulates it."""
    flags = cpu_model_and_flags()[1]
    return bool({"amx_bf16", "avx512_bf16"} & flags) or (platform.machine().lower() in ("aarch64", "arm64")
                                                        and "bf16" in flags)


@functools.lru_cache(maxsize=1)
def describe() -> dict[str, Any]:
    """The machine facts that can change a score's bits: CPU model, ISA flags, torch version and build."""
    import torch

    model, flags = cpu_model_and_flags()
    return {
        "cpu": model,
        "arch": platform.machine(),
        "isa": sorted(flag for flag in ISA_FLAGS if flag in flags),
        "torch": torch.__version__,
        "torch_git": getattr(torch.version, "git_version", None),
        "torch_cuda": torch.version.cuda,
    }


def key() -> str:
    """One line naming this kind of machine (for caches of per-machine decisions)."""
    facts = describe()
    return f"{facts['cpu']}|{facts['arch']}|{','.join(facts['isa'])}|torch {facts['torch']} {facts['torch_git']}"
