"""The DDPM UNet of Ho et al. (2020), with parameter names identical to pytorch-ddpm's so SecMI/PIA checkpoints load unchanged."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from ..errors import ConfigError

__all__ = ["UNet", "CIFAR10_UNET_CONFIG", "normalize_unet_config", "count_parameters"]

# The 35.7M-parameter CIFAR-10 model trained by pytorch-ddpm, SecMI and PIA.
CIFAR10_UNET_CONFIG: dict[str, Any] = {
    "T": 1000,
    "ch": 128,
    "ch_mult": [1, 2, 2, 2],
    "attn": [1],
    "num_res_blocks": 2,
    "dropout": 0.1,
    "in_ch": 3,
    "img_size": 32,
}

# GroupNorm group count is fixed by the architecture (and hence by the checkpoints).
_NORM_GROUPS = 32

# What UNet.set_fused(None) means per device type, for models in channels_last memory. CPU: on,
# never slower in the measurements of bench/README.md ("Fused GroupNorm"). CUDA: off until a
# GPU run has validated the fused kernels against the plain path (tests/test_fused_group_norm.py,
# marked cuda).
FUSED_BY_DEFAULT: dict[str, bool] = {"cpu": True, "cuda": False}


def normalize_unet_config(config: dict[str, Any] | None = None, **overrides) -> dict[str, Any]:
    """Fill defaults, coerce types and validate UNet kwargs; returns a JSON-serialisable dict.

    Raises ConfigError naming the offending key.
    """
    merged = dict(CIFAR10_UNET_CONFIG)
    unknown = set(config or {}) - set(merged)
    if unknown:
        raise ConfigError(
            f"UNet config: unknown key(s) {sorted(unknown)}; valid keys are {sorted(merged)}"
        )
    merged.update(config or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    out: dict[str, Any] = {}
    for key in ("T", "ch", "num_res_blocks", "in_ch", "img_size"):
        out[key] = _int(merged[key], key, minimum=1)
    out["ch_mult"] = _int_list(merged["ch_mult"], "ch_mult", minimum=1)
    if not out["ch_mult"]:
        raise ConfigError("UNet config: ch_mult is empty; give at least one level, e.g. 1,2,2,2")
    out["attn"] = _int_list(merged["attn"], "attn", minimum=0)
    try:
        out["dropout"] = float(merged["dropout"])
    except (TypeError, ValueError):
        raise ConfigError(f"UNet config: dropout = {merged['dropout']!r} must be a number in [0, 1)") from None
    if not 0.0 <= out["dropout"] < 1.0:
        raise ConfigError(f"UNet config: dropout = {out['dropout']} must be in [0, 1)")
    levels = len(out["ch_mult"])
    bad_attn = [i for i in out["attn"] if i >= levels]
    if bad_attn:
        raise ConfigError(
            f"UNet config: attn level(s) {bad_attn} out of range; ch_mult has {levels} levels (0..{levels - 1})"
        )
    if out["ch"] % 2:
        raise ConfigError(f"UNet config: ch = {out['ch']} must be even (sinusoidal time embedding)")
    for mult in out["ch_mult"]:
        if (out["ch"] * mult) % _NORM_GROUPS:
            raise ConfigError(
                f"UNet config: ch * ch_mult = {out['ch'] * mult} must be a multiple of {_NORM_GROUPS} (GroupNorm groups)"
            )
    if out["ch"] % _NORM_GROUPS:
        raise ConfigError(f"UNet config: ch = {out['ch']} must be a multiple of {_NORM_GROUPS} (GroupNorm groups)")
    factor = 2 ** (levels - 1)
    if out["img_size"] % factor:
        raise ConfigError(
            f"UNet config: img_size = {out['img_size']} must be divisible by 2**(len(ch_mult)-1) = {factor}; "
            "use fewer ch_mult levels (--ch-mult, e.g. 1,2,2) or another image size"
        )
    return out


def _int(value, key: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"UNet config: {key} = {value!r} must be an integer >= {minimum}")
    try:
        as_int = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"UNet config: {key} = {value!r} must be an integer >= {minimum}") from None
    if as_int != value and not (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        raise ConfigError(f"UNet config: {key} = {value!r} must be an integer >= {minimum}")
    if as_int < minimum:
        raise ConfigError(f"UNet config: {key} = {as_int} must be an integer >= {minimum}")
    return as_int


def _int_list(value, key: str, minimum: int) -> list[int]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v != ""]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Sequence):
        raise ConfigError(f"UNet config: {key} = {value!r} must be a list of integers, e.g. 1,2,2,2")
    return [_int(v, key, minimum) for v in value]


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters; by default without the frozen sinusoid table (35.7M for the CIFAR-10 UNet, as papers quote)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _sinusoid_table(T: int, dim: int) -> torch.Tensor:
    # Row t = [sin(t w_0), cos(t w_0), sin(t w_1), cos(t w_1), ...]: sin/cos interleaved, as pytorch-ddpm's
    # checkpoints store it (the table is part of their state dict).
    freqs = torch.exp(-(torch.arange(0, dim, 2) / dim * math.log(10000)))
    angles = torch.arange(T, dtype=torch.float32)[:, None] * freqs[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(T, dim)


def _xavier(module: nn.Module, gain: float = 1.0) -> None:
    init.xavier_uniform_(module.weight, gain=gain)
    init.zeros_(module.bias)


class TimeEmbedding(nn.Module):
    """Integer timestep -> sinusoid (a frozen embedding table) -> Linear -> SiLU -> Linear."""

    def __init__(self, T: int, dim: int, out_dim: int):
        super().__init__()
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(_sinusoid_table(T, dim), freeze=True),
            nn.Linear(dim, out_dim),
            nn.SiLU(),
            nn.Linear(out_dim, out_dim),
        )
        _xavier(self.timembedding[1])
        _xavier(self.timembedding[3])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timembedding(t)


def _fused_norm(x: torch.Tensor, norm: nn.GroupNorm, silu: bool = False, add: torch.Tensor | None = None,
                return_sum: bool = False):
    """norm(x + add), then SiLU if `silu`, as one kernels.group_norm.group_norm_act call (and x + add with `return_sum`).

    x and add are brought to their promoted dtype first, as `x + add` would be.
    """
    from ..kernels.group_norm import group_norm_act

    if add is not None and add.dtype != x.dtype:
        dtype = torch.promote_types(x.dtype, add.dtype)
        x, add = x.to(dtype), add.to(dtype)
    return group_norm_act(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=silu, add=add,
                          return_sum=return_sum)


class _Resample(nn.Module):
    """The 3x3 convolution of DownSample and UpSample: padding 1, xavier init, named `main` as in pytorch-ddpm."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)
        _xavier(self.main)


class DownSample(_Resample):
    """Stride-2 3x3 convolution (symmetric padding 1, as pytorch-ddpm)."""

    def __init__(self, channels: int):
        super().__init__(channels, stride=2)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, fused: bool = False) -> torch.Tensor:
        return self.main(x)


class UpSample(_Resample):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__(channels, stride=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, fused: bool = False) -> torch.Tensor:
        return self.main(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(_NORM_GROUPS, channels)
        self.proj_q = nn.Conv2d(channels, channels, 1)
        self.proj_k = nn.Conv2d(channels, channels, 1)
        self.proj_v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        for conv in (self.proj_q, self.proj_k, self.proj_v):
            _xavier(conv)
        _xavier(self.proj, gain=1e-5)  # the block starts as (almost) the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x, self.group_norm(x))

    def attend(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x + attention over h = group_norm(x) (the fused path computes h together with x)."""
        batch, channels, height, width = x.shape

        def tokens(t: torch.Tensor) -> torch.Tensor:  # N x C x H x W -> N x 1 x HW x C (one head)
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        q, k, v = tokens(self.proj_q(h)), tokens(self.proj_k(h)), tokens(self.proj_v(h))
        # Default scale 1/sqrt(C) is pytorch-ddpm's C ** -0.5.
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj(attended)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected time embedding, GroupNorm-SiLU-dropout-conv, skip, optional attention."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, attn: bool):
        super().__init__()
        # Layer positions inside the Sequentials fix the checkpoint key names (block1.2, block2.3, temb_proj.1).
        self.block1 = nn.Sequential(nn.GroupNorm(_NORM_GROUPS, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(_NORM_GROUPS, out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()
        _xavier(self.block1[2])
        _xavier(self.temb_proj[1])
        _xavier(self.block2[3], gain=1e-5)  # residual branch starts near zero
        if isinstance(self.shortcut, nn.Conv2d):
            _xavier(self.shortcut)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if fused:
            return self._forward_fused(x, temb)
        h = self.block1(x)
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h)
        return self.attn(h + self.shortcut(x))

    def _forward_fused(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # The same layers, with each GroupNorm, the SiLU after it and the add before it in one kernel.
        h = self.block1[2](_fused_norm(x, self.block1[0], silu=True))
        h = _fused_norm(h, self.block2[0], silu=True, add=self.temb_proj(temb))
        h = self.block2[3](self.block2[2](h))
        skip = self.shortcut(x)
        if isinstance(self.attn, AttnBlock):
            normed, total = _fused_norm(h, self.attn.group_norm, add=skip, return_sum=True)
            return self.attn.attend(total, normed)
        return h + skip


class UNet(nn.Module):
    """eps_theta(x, t) of DDPM: x is N x in_ch x H x W in [-1, 1], t an int64 tensor [N] (or an int)."""

    def __init__(
        self,
        T: int = 1000,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        attn: Sequence[int] = (1,),
        num_res_blocks: int = 2,
        dropout: float = 0.1,
        in_ch: int = 3,
        img_size: int = 32,
    ):
        super().__init__()
        cfg = normalize_unet_config(
            {"T": T, "ch": ch, "ch_mult": list(ch_mult), "attn": list(attn), "num_res_blocks": num_res_blocks,
             "dropout": dropout, "in_ch": in_ch, "img_size": img_size}
        )
        self.config = cfg
        ch, tdim = cfg["ch"], cfg["ch"] * 4
        self.time_embedding = TimeEmbedding(cfg["T"], ch, tdim)
        self.head = nn.Conv2d(cfg["in_ch"], ch, 3, padding=1)
        _xavier(self.head)

        # Channel count of every activation the down path hands to the up path (skip connections).
        skip_channels = [ch]
        now_ch = ch
        levels = len(cfg["ch_mult"])
        self.downblocks = nn.ModuleList()
        for level, mult in enumerate(cfg["ch_mult"]):
            out_ch = ch * mult
            for _ in range(cfg["num_res_blocks"]):
                self.downblocks.append(ResBlock(now_ch, out_ch, tdim, cfg["dropout"], level in cfg["attn"]))
                now_ch = out_ch
                skip_channels.append(now_ch)
            if level != levels - 1:
                self.downblocks.append(DownSample(now_ch))
                skip_channels.append(now_ch)

        self.middleblocks = nn.ModuleList([
            ResBlock(now_ch, now_ch, tdim, cfg["dropout"], attn=True),
            ResBlock(now_ch, now_ch, tdim, cfg["dropout"], attn=False),
        ])

        self.upblocks = nn.ModuleList()
        for level in reversed(range(levels)):
            out_ch = ch * cfg["ch_mult"][level]
            for _ in range(cfg["num_res_blocks"] + 1):
                self.upblocks.append(
                    ResBlock(skip_channels.pop() + now_ch, out_ch, tdim, cfg["dropout"], level in cfg["attn"])
                )
                now_ch = out_ch
            if level != 0:
                self.upblocks.append(UpSample(now_ch))
        assert not skip_channels

        self.tail = nn.Sequential(
            nn.GroupNorm(_NORM_GROUPS, now_ch), nn.SiLU(), nn.Conv2d(now_ch, cfg["in_ch"], 3, padding=1)
        )
        _xavier(self.tail[2], gain=1e-5)

        self.fused: bool | None = None  # see set_fused

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config["in_ch"], self.config["img_size"], self.config["img_size"])

    def set_fused(self, fused: bool | None = True) -> "UNet":
        """Run each GroupNorm with the SiLU after it and the add before it (the time embedding, the
        residual before attention) as one fused kernel (qmia_fast.kernels.group_norm), on channels_last memory.

        True: fused wherever it can run (CPU or CUDA, float32/bfloat16/float16 activations, no
        gradients needed; elsewhere the plain layers run). False: never. None (the default): the
        device decides (FUSED_BY_DEFAULT), for a model kept in channels_last memory
        (model.to(memory_format=torch.channels_last), as the scorer keeps it); the fused op
        works on NHWC memory and would otherwise move every activation there. Outputs equal
        the plain path's to float rounding. Returns the model.
        """
        if fused is not None and not isinstance(fused, bool):
            raise ConfigError(f"fused must be True, False or None (the device decides), got {fused!r}")
        self.fused = fused
        return self

    def _fused_now(self, x: torch.Tensor) -> bool:
        fused = getattr(self, "fused", None)  # absent on a UNet pickled before set_fused existed
        if fused is None:
            weight = self.tail[2].weight  # [in_ch, ch, 3, 3], ch > 1: its layout is never ambiguous
            channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
            fused = FUSED_BY_DEFAULT.get(x.device.type, False) and channels_last
        if not fused or x.device.type not in ("cpu", "cuda"):
            return False
        if self.tail[0].weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return False
        # The fused ops have no backward: training and gradient-based callers keep torch's layers.
        return not (torch.is_grad_enabled() and (x.requires_grad or self.tail[0].weight.requires_grad))

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=torch.long, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        fused = self._fused_now(x)
        temb = self.time_embedding(t)
        h = self.head(x)
        skips = [h]
        for layer in self.downblocks:
            h = layer(h, temb, fused)
            skips.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb, fused)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, temb, fused)
        if fused:
            return self.tail[2](_fused_norm(h, self.tail[0], silu=True))
        return self.tail(h)
