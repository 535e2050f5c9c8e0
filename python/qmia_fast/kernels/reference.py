"""Plain-PyTorch references of the fused kernels: exact Philox bits, float64 arithmetic, and plain-PyTorch baselines.

Three kinds of functions live here:

* ``philox4x32_10_reference`` / ``philox_uint32_reference``: the Philox counter stream
  written with torch int64 bit operations (products split into 16-bit halves so that no
  int64 overflows), to check the compiled generator bit for bit.
* ``*_reference``: what each kernel computes, in float64 from the same (already
  rounded) inputs; ``philox_normal_reference`` is the exact Box-Muller transform of the
  same words with torch's float64 log/sqrt/cos/sin.
* ``*_baseline``: how one would do the same job in ordinary PyTorch (``torch.randn``
  noise, broadcast arithmetic, ``.sum``), which the benchmark times against the kernels.
  Baselines use torch's own generator, so their noise differs from ours.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

MASK32 = 0xFFFFFFFF
PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)

Number = Union[float, torch.Tensor]


# ---------------------------------------------------------------------------
# Philox4x32-10 with int64 tensors
# ---------------------------------------------------------------------------

def _mulhilo32(constant: int, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of constant * value for value in [0, 2**32), exactly."""
    low_half, high_half = constant & 0xFFFF, constant >> 16
    product_low = value * low_half  # < 2**48
    product_high = value * high_half  # < 2**48
    partial = product_low + ((product_high & 0xFFFF) << 16)  # < 2**49
    low = partial & MASK32
    high = ((partial >> 32) + (product_high >> 16)) & MASK32
    return high, low


def philox4x32_10_reference(counter: Sequence[torch.Tensor], key: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
    """Philox4x32-10 of int64 counter words (each in [0, 2**32), broadcastable) and a key (k0, k1)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & MASK32 for c in counter)
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for _ in range(10):
        high0, low0 = _mulhilo32(PHILOX_MUL[0], c0)
        high1, low1 = _mulhilo32(PHILOX_MUL[1], c2)
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
        k0 = (k0 + PHILOX_WEYL[0]) & MASK32
        k1 = (k1 + PHILOX_WEYL[1]) & MASK32
    return c0, c1, c2, c3


def philox_uint32_reference(n_rows: int, n_groups: int, seed: int, offset: int = 0, stream: int = 0,
                            samples: Optional[Sequence[int]] = None) -> torch.Tensor:
    """int64 [n_rows, n_groups, 4]: the words for counter (g, stream, sample low, sample high).

    Row i's sample index is offset + i, or samples[i] when given.
    """
    if samples is None:
        samples = torch.arange(n_rows, dtype=torch.int64).reshape(-1, 1) + offset
    else:
        samples = torch.as_tensor(samples, dtype=torch.int64).cpu().reshape(-1, 1)
    groups = torch.arange(n_groups, dtype=torch.int64).reshape(1, -1)
    counter = (groups, torch.full_like(groups, stream), samples & MASK32, samples >> 32)
    counter = [c.contiguous() for c in torch.broadcast_tensors(*counter)]
    words = philox4x32_10_reference(counter, (seed & MASK32, seed >> 32))
    return torch.stack(words, dim=-1)


def box_muller_reference(radius_word: torch.Tensor, angle_word: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 (r cos 2 pi u2, r sin 2 pi u2) for u = (word + 0.5) / 2**32, exact up to float64 rounding.

    The angle is reduced to a quadrant and (pi/2) y, |y| <= 1/2, with integer arithmetic
    first: cos(2 pi u2) evaluated directly loses relative accuracy near its zeros.
    """
    u1 = (radius_word.to(torch.float64) + 0.5) * 2.0**-32
    radius = torch.sqrt(-2.0 * torch.log(u1))
    quadrant = ((angle_word + 2**29) >> 30) & 3
    d = angle_word - (quadrant << 30)
    d = torch.where(d >= 2**31, d - 2**32, d)
    y = (2 * d + 1).to(torch.float64) * 2.0**-31
    c = torch.cos(math.pi / 2 * y)
    s = torch.sin(math.pi / 2 * y)
    cos_full = torch.where(quadrant == 0, c, torch.where(quadrant == 1, -s, torch.where(quadrant == 2, -c, s)))
    sin_full = torch.where(quadrant == 0, s, torch.where(quadrant == 1, c, torch.where(quadrant == 2, -s, -c)))
    return radius * cos_full, radius * sin_full


def philox_normal_reference(shape: Sequence[int], seed: int, offset: int = 0, stream: int = 0,
                            samples: Optional[Sequence[int]] = None) -> torch.Tensor:
    """float64 noise of `shape` (C order) with the key/counter layout of qmia_fast.kernels (row i keyed by
    offset + i, or by samples[i] when given)."""
    shape = tuple(int(s) for s in shape)
    n_rows = shape[0]
    row_length = math.prod(shape[1:]) if len(shape) > 1 else 1
    n_groups = (row_length + 3) // 4
    words = philox_uint32_reference(n_rows, n_groups, seed, offset, stream, samples)
    z0, z1 = box_muller_reference(words[..., 0], words[..., 1])
    z2, z3 = box_muller_reference(words[..., 2], words[..., 3])
    normals = torch.stack((z0, z1, z2, z3), dim=-1).reshape(n_rows, 4 * n_groups)[:, :row_length]
    return normals.reshape(shape)


# ---------------------------------------------------------------------------
# float64 references of the arithmetic kernels
# ---------------------------------------------------------------------------

def _per_sample(value: Number, like: torch.Tensor) -> torch.Tensor:
    """A number or [N] coefficient as float64, shaped to broadcast over `like`'s rows."""
    coef = torch.as_tensor(value, dtype=torch.float64).to(like.device)
    if coef.dim() == 0:
        return coef
    return coef.reshape((-1,) + (1,) * (like.dim() - 1))


def _rowsum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).sum(dim=1)


def noise_inject_reference(x0: torch.Tensor, a: Number, b: Number, seed: int, offset: int = 0, stream: int = 0,
                           eps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float64 a x0 + b eps; eps defaults to the float32-rounded noise the kernel uses."""
    if eps is None:
        eps = philox_normal_reference(x0.shape, seed, offset, stream).float()
    x = x0.to(torch.float64)
    return _per_sample(a, x) * x + _per_sample(b, x) * eps.to(torch.float64)


def eps_sq_error_reference(eps_pred: torch.Tensor, seed: int, offset: int = 0, stream: int = 0) -> torch.Tensor:
    """float64 [N]: sum of (eps_pred - eps)^2 with the float32 noise the kernel regenerates."""
    eps = philox_normal_reference(eps_pred.shape, seed, offset, stream).float().to(torch.float64)
    return _rowsum((eps_pred.to(torch.float64) - eps) ** 2)


def ddim_step_reference(x: torch.Tensor, eps: torch.Tensor, c1: Number, c2: Number) -> torch.Tensor:
    x64 = x.to(torch.float64)
    return _per_sample(c1, x64) * x64 + _per_sample(c2, x64) * eps.to(torch.float64)


def ddim_step_sqerr_reference(x: torch.Tensor, eps: torch.Tensor, c1: Number, c2: Number,
                              ref: torch.Tensor) -> torch.Tensor:
    return _rowsum((ddim_step_reference(x, eps, c1, c2) - ref.to(torch.float64)) ** 2)


def pnorm_error_reference(a: torch.Tensor, b: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    return _rowsum((a.to(torch.float64) - b.to(torch.float64)).abs() ** p)


def vote_reference(scores: torch.Tensor, thresholds: torch.Tensor):
    """(votes int32, decision bool, margin float64) of the majority vote, in float64."""
    s = scores.to(torch.float64)
    t = thresholds.to(torch.float64)
    votes = (s.unsqueeze(0) < t).sum(dim=0).to(torch.int32)
    decision = 2 * votes > t.shape[0]
    if t.shape[0] == 0:
        margin = torch.full_like(s, float("nan"))
    else:
        margin = (t - s.unsqueeze(0)).mean(dim=0)
    return votes, decision, margin


def group_norm_act_reference(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
                             bias: Optional[torch.Tensor] = None, eps: float = 1e-5, silu: bool = False,
                             add: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y, s) in float64 for group_norm.group_norm_act: s = x + add formed in float32 from the
    stored values, as the kernel forms it, and y = act(GroupNorm(s)) from there in float64.

    ``add`` is x's shape, [N, C] or [N, C, 1, 1]; the kernel returns s rounded to x's dtype.
    """
    s = x.to(torch.float32)
    if add is not None:
        a = add.to(torch.float32)
        s = s + (a.reshape(x.shape[0], x.shape[1], 1, 1) if a.shape != x.shape else a)
    s = s.to(torch.float64)
    n, channels = s.shape[:2]
    grouped = s.reshape(n, groups, (channels // groups) * s.shape[2] * s.shape[3])
    mean = grouped.mean(dim=2, keepdim=True)
    variance = ((grouped - mean) ** 2).mean(dim=2, keepdim=True)
    y = ((grouped - mean) / torch.sqrt(variance + eps)).reshape(s.shape)
    if weight is not None:
        y = y * weight.to(torch.float64).reshape(1, channels, 1, 1)
    if bias is not None:
        y = y + bias.to(torch.float64).reshape(1, channels, 1, 1)
    if silu:
        y = y * torch.sigmoid(y)
    return y, s


# ---------------------------------------------------------------------------
# plain-PyTorch baselines (what the fused kernels replace)
# ---------------------------------------------------------------------------

def _broadcast_coef(value: Number, like: torch.Tensor) -> torch.Tensor:
    coef = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return coef if coef.dim() == 0 else coef.reshape((-1,) + (1,) * (like.dim() - 1))


def noise_inject_baseline(x0: torch.Tensor, a: Number, b: Number,
                          generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """torch.randn noise, then a x0 + b eps with broadcasting: returns (x_t, eps)."""
    eps = torch.randn(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
    return _broadcast_coef(a, x0) * x0 + _broadcast_coef(b, x0) * eps, eps


def eps_sq_error_baseline(eps_pred: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draw the noise again with torch.randn and sum the squared error per sample in float32."""
    eps = torch.randn(eps_pred.shape, dtype=eps_pred.dtype, device=eps_pred.device, generator=generator)
    return _rowsum((eps_pred.float() - eps.float()) ** 2)


def ddim_step_baseline(x: torch.Tensor, eps: torch.Tensor, c1: Number, c2: Number) -> torch.Tensor:
    return _broadcast_coef(c1, x) * x + _broadcast_coef(c2, x) * eps


def ddim_step_sqerr_baseline(x: torch.Tensor, eps: torch.Tensor, c1: Number, c2: Number,
                             ref: torch.Tensor) -> torch.Tensor:
    step = ddim_step_baseline(x, eps, c1, c2)
    return _rowsum((step.float() - ref.float()) ** 2)


def pnorm_error_baseline(a: torch.Tensor, b: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    return _rowsum((a.float() - b.float()).abs() ** p)


def vote_baseline(scores: torch.Tensor, thresholds: torch.Tensor):
    votes = (scores.unsqueeze(0) < thresholds).sum(dim=0).to(torch.int32)
    return votes, 2 * votes > thresholds.shape[0], (thresholds - scores.unsqueeze(0)).float().mean(dim=0)


def group_norm_act_baseline(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
                            bias: Optional[torch.Tensor] = None, eps: float = 1e-5, silu: bool = False,
                            add: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same job in plain PyTorch: the add, F.group_norm, then F.silu."""
    h = x if add is None else x + (add if add.shape == x.shape else add.reshape(x.shape[0], x.shape[1], 1, 1))
    h = torch.nn.functional.group_norm(h, groups, weight, bias, eps)
    return torch.nn.functional.silu(h) if silu else h
