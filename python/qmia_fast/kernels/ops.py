"""The public fused kernels (noise, DDIM step, per-sample reductions, vote): validated torch wrappers over the C++/CUDA core.

Every public function takes and returns torch tensors, checks its arguments
(dtype, device, shape, layout, ranges) and raises :class:`qmia_fast.errors.InputError`
or :class:`qmia_fast.errors.ConfigError` naming the argument and the fix before any
pointer reaches the compiled core. CPU tensors run on ``qmia_fast._cpu`` (OpenMP,
``torch.get_num_threads()`` threads, one thread below 2**20 elements); CUDA tensors run on ``qmia_fast._cuda`` on
``torch.cuda.current_stream(device)``, without host synchronisation (so calls can
be captured in CUDA graphs), except the finiteness check of CUDA coefficient
tensors outside graph capture (see ``_coefficients``).

Tensors are ``N x ...``: row ``i`` is sample ``i`` and has ``D = prod(shape[1:])``
elements (``D = 1`` for a 1-D tensor). Storage dtypes are float32, bfloat16 and
float16 (``vote`` also float64); arithmetic and accumulation are float32, row sums
combine their 4096-element chunks in float64.

Noise (``philox_normal``, ``noise_inject``, ``eps_sq_error``) is Philox4x32-10 with a
Box-Muller transform, the same bits on CPU and CUDA::

    key     = (seed mod 2**32, seed // 2**32)                 seed in [0, 2**63) (seeds.SEED_LIMIT)
    counter = (e // 4, stream, sample mod 2**32, sample // 2**32)
    sample  = offset + i, or samples[i]                       offset >= 0; samples int64 >= 0
    e       = logical C-order index of the element in its row (c*H*W + h*W + w)

One Philox call yields words ``(w0, w1, w2, w3)`` for elements ``4g .. 4g+3``:
``u1 = (w_even + 0.5) / 2**32``, ``u2 = (w_odd + 0.5) / 2**32``,
``n[4g+0|2] = sqrt(-2 ln u1) cos(2 pi u2)``, ``n[4g+1|3] = sqrt(-2 ln u1) sin(2 pi u2)``
on the pairs ``(w0, w1)`` and ``(w2, w3)``. The transcendental functions are our own
float64 polynomials (not libm), so the float32 result is the correctly rounded exact
Box-Muller value except about once in 200,000 draws, where it is 1 ulp off. A
sample's noise depends only on (seed, sample index, stream, logical shape): never on
the batch it is in, the device, the thread count or the memory format.
``stream`` (0 .. 2**32-1) gives independent noise for the same (seed, sample).

Instead of ``offset`` the noise kernels take ``samples``: an int64 tensor [N] on the
data's device holding each row's global sample index. It exists for CUDA graphs: a
scalar offset is frozen into a captured launch, while a graph reads the ``samples``
tensor afresh at every replay, so refilling it (``samples.copy_(...)``) moves the batch
without re-capturing. ``samples = offset + arange(N)`` gives exactly the bits of
``offset``.

Row sums are deterministic: the order is fixed by the element index (chunks of 4096,
1024 lanes, a pairwise fold, chunk sums in float64; see ``csrc/common/row_reduce.h``),
so a sample's sum has the same bits alone or inside any batch, with any thread
count, and on CPU and CUDA (for ``pnorm_error`` with p not in {1, 2, 3, 4}, CUDA's
``powf`` may differ from the CPU's by an ulp per term).

Layout: rows that are dense in C order, or 4-D tensors dense in
``torch.channels_last``, go to the kernel as they are. Anything else (slices,
transposes, expanded tensors) is first copied with ``.contiguous()``, which costs a
copy of that tensor. When the tensor arguments of one call have different layouts,
the others are copied to the layout of the first. Outputs of ``ddim_step`` and
``noise_inject`` keep the (possibly copied) input's memory format.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch

from ..errors import ConfigError, InputError
from .dispatch import (  # noqa: F401 - the package's private toolkit
    Coefficient, _STORAGE_CODES, _STORAGE_NAMES, _VOTE_CODES, _address, _as_int, _backend, _check_group,
    _check_offset, _check_same_shape, _check_seed, _check_stream, _check_tensor, _coef_args, _coefficients,
    _dense_rows, _launch, _noise_keys, _parse_device, _parse_shape, _row_length,
)

# ---------------------------------------------------------------------------
# public kernels
# ---------------------------------------------------------------------------

def philox_uint32(n_rows: int, n_groups: int, seed: int, offset: int = 0, stream: int = 0,
                  device: Any = None) -> torch.Tensor:
    """Raw Philox4x32-10 words: int64 [n_rows, n_groups, 4] with values in [0, 2**32).

    Entry [i, g, k] is word k of Philox(counter=(g, stream, offset+i low, high), key=seed).
    Exposed so that tests and other tools can check the stream bit for bit.
    """
    n_rows = _as_int(n_rows, "n_rows")
    n_groups = _as_int(n_groups, "n_groups")
    if n_rows < 0 or n_groups < 0:
        raise InputError(f"n_rows and n_groups must be >= 0, got {n_rows}, {n_groups}")
    if n_groups > 2**32:
        raise InputError(f"n_groups must be <= 2**32, got {n_groups}")
    seed = _check_seed(seed)
    stream = _check_stream(stream)
    offset = _check_offset(offset, n_rows)
    dev = _parse_device(device)
    _backend(dev, "device")
    out = torch.empty((n_rows, n_groups, 4), dtype=torch.int32, device=dev)
    if out.numel():
        _launch("philox_uint32", dev, out.data_ptr(), n_rows, n_groups, seed, offset, stream)
    return out.to(torch.int64) & 0xFFFFFFFF


def philox_normal(shape: Any, seed: int, offset: int = 0, device: Any = None,
                  dtype: torch.dtype = torch.float32, stream: int = 0,
                  samples: Optional[torch.Tensor] = None) -> torch.Tensor:
    """N(0, 1) noise of the given shape (C-contiguous): element e of row i is keyed by
    (seed, sample offset + i or samples[i], element e, stream), see the module docstring.

    The values are computed in float32 and rounded to ``dtype``.
    """
    dims = _parse_shape(shape)
    if dtype not in _STORAGE_CODES:
        raise InputError(f"dtype {dtype} is not supported; use {_STORAGE_NAMES}")
    dev = _parse_device(device)
    _backend(dev, "device")
    keys, samples = _noise_keys(seed, offset, stream, samples, dims[0], dev)
    row_length = _row_length(dims)
    out = torch.empty(dims, dtype=dtype, device=dev)
    if out.numel():
        _launch("philox_normal", dev, out.data_ptr(), _STORAGE_CODES[dtype], dims[0], row_length, 0, 1, 1, *keys,
                elements=out.numel())
    return out


def noise_inject(x0: torch.Tensor, a: Coefficient, b: Coefficient, seed: int, offset: int = 0,
                 return_noise: bool = False, stream: int = 0, samples: Optional[torch.Tensor] = None):
    """Forward diffusion with in-kernel noise: ``x_t = a[i] * x0 + b[i] * eps``.

    ``eps`` is ``philox_normal(x0.shape, seed, offset, stream=stream, samples=samples)`` in
    float32 (keyed by the logical element index whatever x0's memory format). ``a`` and ``b`` are numbers or
    per-sample tensors [N] of any float dtype on any device. Returns ``x_t`` (x0's dtype and
    memory format), or ``(x_t, eps)`` with ``eps`` rounded to x0's dtype when
    ``return_noise`` is true; ``x_t`` is computed from the float32 ``eps``.
    """
    x0 = _check_group({"x0": x0}, _STORAGE_CODES, _STORAGE_NAMES)["x0"]
    n_rows = x0.shape[0]
    keys, samples = _noise_keys(seed, offset, stream, samples, n_rows, x0.device)
    coef_a = _coefficients("a", a, n_rows, x0.device)
    coef_b = _coefficients("b", b, n_rows, x0.device)
    dense, layout = _dense_rows({"x0": x0})
    x0 = dense["x0"]
    x_t = torch.empty_like(x0)
    eps = torch.empty_like(x0) if return_noise else None
    if x0.numel():
        _launch("noise_inject", x0.device, x0.data_ptr(), *_coef_args(coef_a), *_coef_args(coef_b), x_t.data_ptr(),
                _address(eps), _STORAGE_CODES[x0.dtype], n_rows, *layout, *keys, elements=x0.numel())
    return (x_t, eps) if return_noise else x_t


def eps_sq_error(eps_pred: torch.Tensor, seed: int, offset: int = 0, stream: int = 0,
                 samples: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 [N]: ``sum_e (eps_pred[i, e] - eps[i, e])**2`` with ``eps`` regenerated from
    its key (seed, offset + i or samples[i], e, stream) instead of read from memory."""
    tensors = _check_group({"eps_pred": eps_pred}, _STORAGE_CODES, _STORAGE_NAMES)
    n_rows = tensors["eps_pred"].shape[0]
    keys, samples = _noise_keys(seed, offset, stream, samples, n_rows, tensors["eps_pred"].device)
    dense, layout = _dense_rows(tensors)
    eps_pred = dense["eps_pred"]
    out = torch.empty(n_rows, dtype=torch.float32, device=eps_pred.device)
    if n_rows:
        _launch("eps_sq_error", eps_pred.device, eps_pred.data_ptr(), out.data_ptr(), _STORAGE_CODES[eps_pred.dtype],
                n_rows, *layout, *keys, elements=eps_pred.numel(), scratch=("reduce", n_rows, layout[0]))
    return out


def ddim_step(x: torch.Tensor, eps: torch.Tensor, c1: Coefficient, c2: Coefficient) -> torch.Tensor:
    """Deterministic DDIM step written as an affine map: ``x_n = c1[i] * x + c2[i] * eps``.

    ``x`` and ``eps`` share shape, dtype and device; the result has x's dtype and memory
    format. ``c1``/``c2`` are numbers or per-sample tensors [N].
    """
    tensors = _check_group({"x": x, "eps": eps}, _STORAGE_CODES, _STORAGE_NAMES)
    _check_same_shape(tensors)
    n_rows, device = tensors["x"].shape[0], tensors["x"].device
    coef1 = _coefficients("c1", c1, n_rows, device)
    coef2 = _coefficients("c2", c2, n_rows, device)
    dense, layout = _dense_rows(tensors)
    x, eps = dense["x"], dense["eps"]
    out = torch.empty_like(x)
    if x.numel():
        _launch("ddim_step", device, x.data_ptr(), eps.data_ptr(), *_coef_args(coef1), *_coef_args(coef2),
                out.data_ptr(), _STORAGE_CODES[x.dtype], n_rows, layout[0], elements=x.numel())
    return out


def ddim_step_sqerr(x: torch.Tensor, eps: torch.Tensor, c1: Coefficient, c2: Coefficient,
                    ref: torch.Tensor) -> torch.Tensor:
    """float32 [N]: ``sum_e (c1[i] * x + c2[i] * eps - ref)**2``, without writing the step."""
    tensors = _check_group({"x": x, "eps": eps, "ref": ref}, _STORAGE_CODES, _STORAGE_NAMES)
    _check_same_shape(tensors)
    n_rows, device = tensors["x"].shape[0], tensors["x"].device
    coef1 = _coefficients("c1", c1, n_rows, device)
    coef2 = _coefficients("c2", c2, n_rows, device)
    dense, layout = _dense_rows(tensors)
    x, eps, ref = dense["x"], dense["eps"], dense["ref"]
    out = torch.empty(n_rows, dtype=torch.float32, device=device)
    if n_rows:
        _launch("ddim_step_sqerr", device, x.data_ptr(), eps.data_ptr(), *_coef_args(coef1), *_coef_args(coef2),
                ref.data_ptr(), out.data_ptr(), _STORAGE_CODES[x.dtype], n_rows, *layout, elements=x.numel(),
                scratch=("reduce", n_rows, layout[0]))
    return out


def pnorm_error(a: torch.Tensor, b: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """float32 [N]: ``sum_e |a - b|**p`` (no root; PIA's score with p = 4).

    p must be finite and > 0; p in {1, 2, 3, 4} uses multiplications only (bit-equal on
    CPU and CUDA), other p go through powf.
    """
    tensors = _check_group({"a": a, "b": b}, _STORAGE_CODES, _STORAGE_NAMES)
    _check_same_shape(tensors)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ConfigError(f"p must be a number > 0, got {p!r}")
    p = float(p)
    if not (math.isfinite(p) and p > 0):
        raise ConfigError(f"p must be finite and > 0, got {p}")
    dense, layout = _dense_rows(tensors)
    a, b = dense["a"], dense["b"]
    n_rows = a.shape[0]
    out = torch.empty(n_rows, dtype=torch.float32, device=a.device)
    if n_rows:
        _launch("pnorm_error", a.device, a.data_ptr(), b.data_ptr(), out.data_ptr(), _STORAGE_CODES[a.dtype], n_rows,
                *layout, p, elements=a.numel(), scratch=("reduce", n_rows, layout[0]))
    return out


def vote(scores: torch.Tensor, thresholds: torch.Tensor):
    """Majority vote of a bag of B quantile regressors.

    ``scores``: [N]; ``thresholds``: [B, N] (any strides; float32, float64, bfloat16 or
    float16, the two may differ: they are compared in their promoted dtype, exactly).
    Model j votes member iff ``scores[i] < thresholds[j, i]`` (a tie is a non-member).
    Returns ``(votes, decision, margin)``: int32 [N] member votes, bool [N]
    ``2 * votes > B``, and the mean over j of ``thresholds[j, i] - scores[i]``,
    accumulated in float64 and returned as float64 when the promoted dtype is float64
    (it is the bag's membership score: float32 would merge distinct scores into ties),
    else as float32. NaN scores or thresholds never vote member and make the
    margin NaN. With B = 0: votes 0, decision False, margin NaN (a mean of nothing).
    With N = 0: three empty tensors.
    """
    scores = _check_tensor("scores", scores)
    thresholds = _check_tensor("thresholds", thresholds)
    for name, t in (("scores", scores), ("thresholds", thresholds)):
        if t.dtype not in _VOTE_CODES:
            raise InputError(f"{name} has dtype {t.dtype}; use float32, float64, bfloat16 or float16")
    if scores.dim() != 1:
        raise InputError(f"scores must be 1-d [N], got shape {tuple(scores.shape)}")
    if thresholds.dim() != 2 or thresholds.shape[1] != scores.shape[0]:
        raise InputError(
            f"thresholds must be [B, N] = [n_models, {scores.shape[0]}], got shape {tuple(thresholds.shape)}; "
            "transpose an [N, B] array with .T"
        )
    if thresholds.device != scores.device:
        raise InputError(f"thresholds is on {thresholds.device} but scores is on {scores.device}; move it with "
                         f"thresholds.to({str(scores.device)!r})")
    _backend(scores.device, "scores")
    dtype = torch.promote_types(scores.dtype, thresholds.dtype)
    scores = scores.to(dtype)
    thresholds = thresholds.to(dtype)
    n_models, n_samples = thresholds.shape
    device = scores.device
    votes = torch.empty(n_samples, dtype=torch.int32, device=device)
    decision = torch.empty(n_samples, dtype=torch.bool, device=device)
    margin = torch.empty(n_samples, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    if n_samples:
        _launch("vote", device, scores.data_ptr(), thresholds.data_ptr(), _VOTE_CODES[dtype], n_samples, n_models,
                scores.stride(0), thresholds.stride(0), thresholds.stride(1), votes.data_ptr(), decision.data_ptr(),
                margin.data_ptr())
    return votes, decision, margin
