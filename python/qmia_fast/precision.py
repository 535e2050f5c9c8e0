"""Precision mechanics of the UNet calls: the variants, autocast and TF32 per call, resident low-precision weights (plan.py decides which)."""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from .errors import ConfigError

# What a user may ask for. fp32 is strict float32 (TF32 off on GPUs); tf32 lets CUDA's
# tensor cores round matrix inputs to TF32; bf16 and fp16 run the UNet under autocast with
# resident weights; the mixed variants (secmi only) run SecMI's inversion in bf16 and the
# two round-trip calls, whose difference is the t-error, in fp32 or TF32.
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16", "mixed", "mixed-tf32")
# The one default of the CLI, the specs, the scorer and the plan: the run plan decides per machine and model.
DEFAULT_PRECISION = "auto"
# What one UNet call runs in.
CALL_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# (inversion, round trip) of the mixed variants.
MIXED_PLANS = {"mixed": ("bf16", "fp32"), "mixed-tf32": ("bf16", "tf32")}
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
