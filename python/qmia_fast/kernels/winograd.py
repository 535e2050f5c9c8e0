"""Float32 CPU layers for channels_last UNets (Winograd F(4x4, 3x3) convolution, NHWC GroupNorm) and a torch function mode that routes a model's calls to them.

Why: without bf16 hardware (AMX, AVX512-BF16) a CPU runs the UNet in float32, and
oneDNN's direct 3x3 convolutions already run near the machine's float32 multiply-add
rate (bench/README.md). Winograd's F(4x4, 3x3) computes a 4x4 output tile from a 6x6
input patch with 36 multiplications per input/output channel pair instead of 144, so
the same convolution needs 4x fewer multiplications in its matrix products. The
transforms around them add work and memory traffic; per layer the whole convolution
still runs faster than oneDNN's from 32 to 512 channels (bench/README.md).

GroupNorm: torch's CPU kernel for channels_last input is slow when a group holds one
or two channels (the demo UNet's 32 channels in 32 groups; bench/README.md); ours
(group_norm.group_norm_act) is two float64-accumulated
passes and one normalising pass over NHWC memory, vectorised across channels. The mode
routes only F.group_norm; fusing the SiLU and the adds around it is the UNet's own
fused forward path (models/unet.py, UNet.set_fused).

Numerics: the filter transform is done in float64 and rounded once; inputs and outputs
go through transforms with coefficients up to 8, so the float32 result differs from a
direct convolution by a few units of 1e-6 relative (a direct float32 convolution is
itself ~1e-7 from the exact value). tests/test_fastconv.py bounds it.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import dispatch as kernels
from ..errors import InputError
from .group_norm import group_norm_act

__all__ = ["winograd_weights", "winograd_conv2d", "group_norm_nhwc", "WinogradConvs", "eligible"]

# G of F(4x4, 3x3) for the interpolation points 0, +-1, +-2 and infinity.
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)

# Tiles per chunk: V (36 x tiles x C) and M (36 x tiles x O) of a chunk stay in the
# caches between the transforms and the matrix products. 128 was the best of 32..all on
# the CIFAR-10 UNet's layers (bench/README.md).
TILES_PER_CHUNK = 128


def winograd_weights(weight: torch.Tensor) -> torch.Tensor:
    """float32 [36, C, O]: U[6 r + c] = (G g G^T)[r, c] for weights g [O, C, 3, 3], computed in float64."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise InputError(f"weight must be O x C x 3 x 3, got shape {tuple(weight.shape)}")
    g = weight.detach().to(device="cpu", dtype=torch.float64)
    transformed = torch.einsum("ri,ocij,sj->rsco", _G, g, _G)
    return transformed.reshape(36, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


class _Scratch:
    """Reused V and M buffers: fresh multi-megabyte allocations would page-fault on every convolution."""

    def __init__(self):
        self.buffers: Dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: Tuple[int, ...]) -> torch.Tensor:
        need = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < need:
            buffer = torch.empty(need, dtype=torch.float32)
            self.buffers[name] = buffer
        return buffer[:need].view(shape)


def winograd_conv2d(x: torch.Tensor, weights: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    tiles_per_chunk: int = TILES_PER_CHUNK, scratch: Optional[_Scratch] = None) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1, of float32 CPU x [N, C, H, W] with U = winograd_weights(g).

    Returns [N, O, H, W] in channels_last memory format (x is copied to it first if it is
    not already). bias: float32 [O] or None.
    """
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise InputError(f"x must be a float32 CPU tensor N x C x H x W, got {x.dtype} {tuple(x.shape)} on {x.device}")
    n, channels, height, width = x.shape
    if weights.shape[:2] != (36, channels):
        raise InputError(f"weights have shape {tuple(weights.shape)}; expected [36, {channels}, O] from "
                         "winograd_weights")
    out_channels = weights.shape[2]
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty((n, out_channels, height, width), dtype=torch.float32, memory_format=torch.channels_last)
    if bias is not None:
        bias = bias.detach().to(torch.float32).contiguous()
    core = kernels._cpu_module()
    tiles = core.winograd_tiles(n, height, width)
    scratch = scratch or _Scratch()
    for p0 in range(0, tiles, tiles_per_chunk):
        p1 = min(tiles, p0 + tiles_per_chunk)
        count = p1 - p0
        v = scratch.get("v", (36, count, channels))
        m = scratch.get("m", (36, count, out_channels))
        # Not kernels._threads' 2**20 cut-off: a chunk's transforms are ~0.1-1 ms of work, worth
        # torch's threads whenever the user gave it several (at one thread nothing changes).
        threads = max(1, torch.get_num_threads()) if 36 * count * max(channels, out_channels) >= 1 << 16 else 1
        core.winograd_input_transform(x.data_ptr(), v.data_ptr(), n, height, width, channels, p0, p1, threads)
        torch.bmm(v, weights, out=m)
        core.winograd_output_transform(m.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(), n, height,
                                       width, out_channels, p0, p1, threads)
    return y


def group_norm_nhwc(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
                    bias: Optional[torch.Tensor] = None, eps: float = 1e-5, silu: bool = False) -> torch.Tensor:
    """F.group_norm (then F.silu if `silu`) for a float32 CPU tensor N x C x H x W, computed on its channels_last
    memory (copied there if needed) by group_norm.group_norm_act; returns a channels_last tensor."""
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise InputError(f"x must be a float32 CPU tensor N x C x H x W, got {x.dtype} {tuple(x.shape)} on {x.device}")
    return group_norm_act(x, groups, weight, bias, eps, silu=silu)


def _pair(value: Any) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value, value)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _conv_arguments(args, kwargs):
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs or {})
    return bound


def eligible(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups=1,
             min_channels: int = 32) -> bool:
    """Whether a conv2d call can go to winograd_conv2d (and is big enough to gain from it)."""
    return (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
            and x.dim() == 4 and weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3)
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.device.type == "cpu" and weight.device.type == "cpu"
            and _pair(stride) == (1, 1) and _pair(dilation) == (1, 1) and groups == 1
            and (_pair(padding) == (1, 1) or padding == "same")
            and weight.shape[0] >= min_channels and weight.shape[1] >= min_channels
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def _group_norm_eligible(x, weight, bias) -> bool:
    return (isinstance(x, torch.Tensor) and x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and all(p is None or (isinstance(p, torch.Tensor) and p.device.type == "cpu") for p in (weight, bias))
            and not (torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                                     for t in (x, weight, bias))))


class WinogradConvs(TorchFunctionMode):
    """Inside `with WinogradConvs():`, eligible F.conv2d calls (3x3, stride 1, padding 1, float32 CPU, at least
    `min_channels` in and out, no autograd) run as winograd_conv2d, and F.group_norm on channels_last float32
    CPU tensors as group_norm_nhwc; everything else runs unchanged.

    Transformed weights are cached per weight tensor and recomputed when the tensor is
    modified in place (its version counter moves).
    """

    def __init__(self, min_channels: int = 32, tiles_per_chunk: int = TILES_PER_CHUNK):
        super().__init__()
        self.min_channels = int(min_channels)
        self.tiles_per_chunk = int(tiles_per_chunk)
        self.calls = 0  # convolutions routed to Winograd, for tests and reports
        self.group_norms = 0  # GroupNorms routed to group_norm_nhwc
        self._weights: Dict[int, Tuple[Any, int, torch.Tensor]] = {}
        self._scratch = _Scratch()

    def _transformed(self, weight: torch.Tensor) -> torch.Tensor:
        entry = self._weights.get(id(weight))
        if entry is not None:
            ref, version, transformed = entry
            if ref() is weight and version == weight._version:
                return transformed
        transformed = winograd_weights(weight)
        self._weights[id(weight)] = (weakref.ref(weight), weight._version, transformed)
        return transformed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d or func is torch.conv2d:
            bound = _conv_arguments(args, kwargs)
            if eligible(bound["input"], bound["weight"], bound["stride"], bound["padding"], bound["dilation"],
                        bound["groups"], self.min_channels):
                self.calls += 1
                return winograd_conv2d(bound["input"], self._transformed(bound["weight"]), bound["bias"],
                                       self.tiles_per_chunk, self._scratch)
        elif func is F.group_norm:
            names = ("input", "num_groups", "weight", "bias", "eps")
            bound = {"weight": None, "bias": None, "eps": 1e-5, **dict(zip(names, args)), **(kwargs or {})}
            if _group_norm_eligible(bound["input"], bound["weight"], bound["bias"]):
                self.group_norms += 1
                return group_norm_nhwc(bound["input"], bound["num_groups"], bound["weight"], bound["bias"],
                                       bound["eps"])
        return func(*args, **(kwargs or {}))

