"""Fused NHWC GroupNorm with the add before it and the SiLU after it, as torch custom ops that torch.compile and CUDA graphs see through.

``group_norm_act(x, groups, weight, bias, eps, silu, add)`` computes
``act(GroupNorm(x + add))`` in one kernel over channels_last memory
(``csrc/common/group_norm.h``), registered as

* ``torch.ops.qmia_fast.group_norm_act(x, add, weight, bias, groups, eps, silu) -> y``
* ``torch.ops.qmia_fast.add_group_norm_act(x, add, weight, bias, groups, eps, silu) -> (y, x + add)``

with CPU and CUDA kernels and a fake (meta) implementation, so ``torch.compile(fullgraph=True)``
traces them and CUDA graph capture records them (the CUDA kernel runs on
``torch.cuda.current_stream``, allocates through torch and never synchronises).

Contract:

* ``x``: N x C x H x W, float32, bfloat16 or float16, on the CPU or a CUDA device. Any
  strides are accepted: the kernel reads channels_last memory, so other layouts are
  first copied to it (one copy; the UNet's activations are channels_last already).
  Outputs are always channels_last tensors of x's dtype.
* ``add``: None, a tensor of x's shape (a residual), or per-(image, channel) values
  [N, C] or [N, C, 1, 1] (a time embedding); x's dtype and device.
* ``weight`` / ``bias``: None (1 and 0) or [C] floating tensors on x's device. float32 or
  x's dtype are read as they are; other dtypes, or a pair of different dtypes, are
  converted to float32 (C values).
* The sum ``s = x + add`` is formed in float32 and normalised unrounded; the statistics
  are float64 on the CPU (two passes: the mean, then squared deviations) and float32
  partial sums merged in float64 on CUDA; ``y = (s - mean) * (gamma / std) + beta`` in
  float32 (the mean subtracted before scaling, so y stays a few ulp from the float64
  value whatever |mean| / std), then ``y * sigmoid(y)`` if ``silu``, then rounded to
  x's dtype. The returned sum is ``s`` rounded to x's dtype. CPU and CUDA agree to
  float32 rounding of the statistics, not bit for bit.

With torch < 2.4 (no ``torch.library.custom_op``) the same kernels run eagerly, unregistered.
No autograd: the ops are for inference (the UNet falls back to torch's layers when
gradients are needed). Bad arguments raise :class:`qmia_fast.errors.InputError` naming
the argument and the fix before any pointer reaches the compiled core, which checks again.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Tuple

import torch

from . import dispatch as kernels
from ..errors import InputError

__all__ = ["group_norm_act", "STORAGE_DTYPES"]

STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Add kinds of csrc/common/group_norm.h (checked against the compiled core below).
_ADD_NONE, _ADD_FULL, _ADD_PER_CHANNEL = 0, 1, 2


def _check_contract() -> None:
    if kernels._cpu is None:  # pragma: no cover - the failure is reported where a kernel is called
        return
    constants = kernels._cpu.contract_constants()
    expected = {"group_norm_add_none": _ADD_NONE, "group_norm_add_full": _ADD_FULL,
                "group_norm_add_per_channel": _ADD_PER_CHANNEL}
    if any(constants.get(key) != value for key, value in expected.items()):  # pragma: no cover - stale build
        raise ImportError("qmia_fast._cpu was built from other sources (GroupNorm add codes differ); rebuild it with "
                          " pip install --no-build-isolation -e .")


_check_contract()


def _check(x: torch.Tensor, add: Optional[torch.Tensor], weight: Optional[torch.Tensor],
           bias: Optional[torch.Tensor], groups: int, eps: float) -> int:
    """Validates one call (tensor metadata only: it runs on fake tensors too) and returns the add kind."""
    for name, t in (("x", x), ("add", add), ("weight", weight), ("bias", bias)):
        if (t is not None or name == "x") and not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise InputError(f"x must be N x C x H x W, got shape {tuple(x.shape)}")
    if x.dtype not in STORAGE_DTYPES:
        raise InputError(f"x has dtype {x.dtype}; use float32, bfloat16 or float16 (convert with .float())")
    if x.device.type not in ("cpu", "cuda", "meta"):
        raise InputError(f"x is on device '{x.device}'; the GroupNorm kernel runs on 'cpu' or 'cuda' tensors")
    n, channels = x.shape[0], x.shape[1]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or channels % groups:
        raise InputError(f"groups = {groups!r} must be a positive integer that divides the {channels} channels of x")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps >= 0):
        raise InputError(f"eps = {eps!r} must be a finite number >= 0")
    for name, t in (("add", add), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise InputError(f"{name} is on {t.device} but x is on {x.device}; move it with {name}.to({str(x.device)!r})")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (not t.is_floating_point() or t.shape != (channels,)):
            raise InputError(f"{name} must be a floating tensor of shape ({channels},) (one value per channel), "
                             f"got {t.dtype} {tuple(t.shape)}")
    if add is None:
        return _ADD_NONE
    if add.dtype != x.dtype:
        raise InputError(f"add has dtype {add.dtype} but x has {x.dtype}; convert it with add.to({x.dtype})")
    if add.shape == x.shape:
        return _ADD_FULL
    if add.shape in ((n, channels), (n, channels, 1, 1)):
        return _ADD_PER_CHANNEL
    raise InputError(f"add has shape {tuple(add.shape)}; it must be x's shape {tuple(x.shape)} (a residual) or "
                     f"[N, C] = [{n}, {channels}] / [N, C, 1, 1] (one value per image and channel)")


def _params(weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
            dtype: torch.dtype) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.dtype]:
    """gamma and beta as the kernel reads them: both float32, or both x's dtype, contiguous."""
    given = {t.dtype for t in (weight, bias) if t is not None}
    param_dtype = given.pop() if len(given) == 1 and given <= {torch.float32, dtype} else torch.float32
    as_kernel = [None if t is None else t.detach().to(param_dtype).contiguous() for t in (weight, bias)]
    return as_kernel[0], as_kernel[1], param_dtype


def _empty_like_nhwc(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _run(x: torch.Tensor, add: Optional[torch.Tensor], weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
         groups: int, eps: float, silu: bool, want_sum: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    add_kind = _check(x, add, weight, bias, groups, eps)
    kernels._backend(x.device, "x")
    x = x.detach().contiguous(memory_format=torch.channels_last)
    if add_kind == _ADD_FULL:
        add = add.detach().contiguous(memory_format=torch.channels_last)
    elif add_kind == _ADD_PER_CHANNEL:
        add = add.detach().reshape(x.shape[0], x.shape[1]).contiguous()
    gamma, beta, param_dtype = _params(weight, bias, x.dtype)
    y = _empty_like_nhwc(x)
    total = _empty_like_nhwc(x) if want_sum else None
    n, channels, height, width = x.shape
    if x.numel():
        codes = kernels._STORAGE_CODES
        kernels._launch("group_norm_act", x.device, x.data_ptr(), kernels._address(add), add_kind,
                        kernels._address(gamma), kernels._address(beta), codes[param_dtype], y.data_ptr(),
                        kernels._address(total), codes[x.dtype], n, height * width, channels, groups, float(eps),
                        int(bool(silu)), elements=x.numel(), scratch=("group_norm", n, height * width, channels))
    return y, total


def _group_norm_act_impl(x: torch.Tensor, add: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                         bias: Optional[torch.Tensor], groups: int, eps: float, silu: bool) -> torch.Tensor:
    return _run(x, add, weight, bias, groups, eps, silu, want_sum=False)[0]


def _group_norm_act_fake(x, add, weight, bias, groups, eps, silu):
    _check(x, add, weight, bias, groups, eps)
    return _empty_like_nhwc(x)


def _add_group_norm_act_impl(x: torch.Tensor, add: torch.Tensor, weight: Optional[torch.Tensor],
                             bias: Optional[torch.Tensor], groups: int, eps: float,
                             silu: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    y, total = _run(x, add, weight, bias, groups, eps, silu, want_sum=True)
    return y, total


def _add_group_norm_act_fake(x, add, weight, bias, groups, eps, silu):
    _check(x, add, weight, bias, groups, eps)
    return _empty_like_nhwc(x), _empty_like_nhwc(x)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4
    _group_norm_act_op = torch.library.custom_op("qmia_fast::group_norm_act", mutates_args=())(_group_norm_act_impl)
    _group_norm_act_op.register_fake(_group_norm_act_fake)
    _add_group_norm_act_op = torch.library.custom_op("qmia_fast::add_group_norm_act",
                                                     mutates_args=())(_add_group_norm_act_impl)
    _add_group_norm_act_op.register_fake(_add_group_norm_act_fake)
else:  # pragma: no cover - older torch: the same kernels, eagerly, invisible to torch.compile
    _group_norm_act_op, _add_group_norm_act_op = _group_norm_act_impl, _add_group_norm_act_impl


def group_norm_act(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, silu: bool = False,
                   add: Optional[torch.Tensor] = None, return_sum: bool = False) -> Any:
    """``act(GroupNorm(x + add))`` as one kernel (see the module docstring); ``(y, x + add)`` with ``return_sum``.

    Equivalent to ``F.group_norm(x + add, groups, weight, bias, eps)`` followed by
    ``F.silu`` when ``silu``, with the statistics in float32 or better whatever x's dtype.
    """
    _check(x, add, weight, bias, groups, eps)
    if return_sum:
        if add is None:
            raise InputError("return_sum=True returns x + add, so it needs add (or call with return_sum=False)")
        return _add_group_norm_act_op(x, add, weight, bias, groups, float(eps), bool(silu))
    return _group_norm_act_op(x, add, weight, bias, groups, float(eps), bool(silu))
