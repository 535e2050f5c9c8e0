"""qmia_fast.kernels: the fused kernels' public ops (ops), the fused GroupNorm custom ops (group_norm), the CPU Winograd layers (winograd), their references (reference) and the private dispatch to the C++/CUDA core (dispatch)."""
from __future__ import annotations

from ..seeds import SEED_LIMIT
from .dispatch import REDUCE_CHUNK, STREAM_LIMIT, cuda_built
from .ops import ddim_step, ddim_step_sqerr, eps_sq_error, noise_inject, philox_normal, philox_uint32, pnorm_error, vote

__all__ = [
    "philox_normal",
    "noise_inject",
    "eps_sq_error",
    "ddim_step",
    "ddim_step_sqerr",
    "pnorm_error",
    "vote",
    "philox_uint32",
    "cuda_built",
    "REDUCE_CHUNK",
    "SEED_LIMIT",
    "STREAM_LIMIT",
]
