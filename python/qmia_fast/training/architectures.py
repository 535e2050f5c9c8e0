"""diffusers configs of the train-target families (UNet2DModel, UNet2DConditionModel, DiT, AutoencoderKL), checked before any work."""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import ConfigError, require_extra

__all__ = ["unet2d_config", "unet2d_condition_config", "dit_config", "vae_config", "build", "DENOISERS",
           "disable_builtin_label_dropout"]

DENOISERS = ("unet", "dit")
_EXTRA = "diffusers"


def _diffusers(feature: str):
    return require_extra("diffusers", _EXTRA, feature)


def _check_levels(size: int, levels: int, option: str, what: str) -> None:
    factor = 2 ** (levels - 1)
    if size % factor:
        raise ConfigError(
            f"{option}: {levels} levels down-sample the {what} ({size} x {size}) {levels - 1} times, by {factor}, "
            f"which does not divide {size}; use fewer levels or {what}s whose size is a multiple of {factor}"
        )


def _groups(channels: Sequence[int], option: str, groups: int = 32) -> int:
    g = math.gcd(groups, *channels)
    if g < min(8, groups) and min(channels) >= 8:
        raise ConfigError(f"{option} = {','.join(map(str, channels))}: the channels share no GroupNorm group count "
                          "of 8 or more; use multiples of 8 (e.g. 32,64)")
    return max(g, 1)


def _levels(ch: int, ch_mult: Sequence[int], attn: Sequence[int], option: str = "--ch-mult") -> list[int]:
    if not ch_mult:
        raise ConfigError(f"{option} must list at least one level, e.g. 1,2,2")
    for level in attn:
        if not 0 <= level < len(ch_mult):
            raise ConfigError(f"--attn: attn level {level} is outside the {len(ch_mult)} levels of {option}")
    channels = [int(ch) * int(m) for m in ch_mult]
    if min(channels) < 1:
        raise ConfigError(f"{option} entries must be >= 1")
    return channels


def unet2d_config(*, sample_size: int, in_channels: int, ch: int, ch_mult: Sequence[int], attn: Sequence[int],
                  num_res_blocks: int, dropout: float, num_class_embeds: int | None = None,
                  what: str = "image") -> dict[str, Any]:
    """A UNet2DModel config: level i has ch * ch_mult[i] channels, self-attention at the `attn` levels."""
    channels = _levels(ch, ch_mult, attn)
    _check_levels(sample_size, len(channels), "--ch-mult", what)
    groups = _groups(channels, "--ch * --ch-mult")
    down = ["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(channels))]
    up = ["AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(channels)))]
    config = {
        "sample_size": int(sample_size), "in_channels": int(in_channels), "out_channels": int(in_channels),
        "layers_per_block": int(num_res_blocks), "block_out_channels": channels,
        "down_block_types": down, "up_block_types": up, "norm_num_groups": groups,
        "attention_head_dim": min(32, channels[0]), "dropout": float(dropout),
    }
    if num_class_embeds is not None:
        config["num_class_embeds"] = int(num_class_embeds)
    return config


def unet2d_condition_config(*, sample_size: int, in_channels: int, ch: int, ch_mult: Sequence[int],
                            attn: Sequence[int], num_res_blocks: int, dropout: float,
                            cross_attention_dim: int) -> dict[str, Any]:
    """A UNet2DConditionModel config: cross-attention to the caption at the `attn` levels and in the middle."""
    channels = _levels(ch, ch_mult, attn)
    if not attn:
        raise ConfigError("--attn: a text-conditioned UNet needs at least one cross-attention level, e.g. --attn 1")
    _check_levels(sample_size, len(channels), "--ch-mult", "latent")
    groups = _groups(channels, "--ch * --ch-mult")
    down = ["CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(channels))]
    up = ["CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(channels)))]
    return {
        "sample_size": int(sample_size), "in_channels": int(in_channels), "out_channels": int(in_channels),
        "layers_per_block": int(num_res_blocks), "block_out_channels": channels,
        "down_block_types": down, "up_block_types": up, "norm_num_groups": groups,
        "cross_attention_dim": int(cross_attention_dim),
        # diffusers' legacy name: for UNet2DConditionModel this is the number of heads.
        "attention_head_dim": max(1, channels[0] // 32), "dropout": float(dropout),
    }


def dit_config(*, sample_size: int, in_channels: int, num_classes: int, layers: int, heads: int, head_dim: int,
               patch_size: int) -> dict[str, Any]:
    """A class-conditional DiTTransformer2DModel config (adaLN-zero, eps only: no learned sigma)."""
    for value, option in ((layers, "--dit-layers"), (heads, "--dit-heads"), (head_dim, "--dit-head-dim"),
                          (patch_size, "--patch-size")):
        if int(value) < 1:
            raise ConfigError(f"{option} = {value} must be >= 1")
    if sample_size % patch_size:
        raise ConfigError(f"--patch-size {patch_size} does not divide the {sample_size} x {sample_size} latents; "
                          f"use a patch size that divides {sample_size}")
    return {
        "sample_size": int(sample_size), "in_channels": int(in_channels), "out_channels": int(in_channels),
        "num_layers": int(layers), "num_attention_heads": int(heads), "attention_head_dim": int(head_dim),
        "patch_size": int(patch_size), "num_embeds_ada_norm": int(num_classes), "dropout": 0.0,
    }


def vae_config(*, sample_size: int, channels: int, vae_ch: Sequence[int], latent_channels: int) -> dict[str, Any]:
    """An AutoencoderKL config that down-samples len(vae_ch) - 1 times (one block of one ResNet per level)."""
    vae_ch = [int(c) for c in vae_ch]
    if not vae_ch or min(vae_ch) < 1:
        raise ConfigError("--vae-ch must list positive channel counts, one per level, e.g. 32,64")
    if int(latent_channels) < 1:
        raise ConfigError(f"--latent-channels = {latent_channels} must be >= 1")
    _check_levels(sample_size, len(vae_ch), "--vae-ch", "image")
    return {
        "in_channels": int(channels), "out_channels": int(channels), "sample_size": int(sample_size),
        "down_block_types": ["DownEncoderBlock2D"] * len(vae_ch), "up_block_types": ["UpDecoderBlock2D"] * len(vae_ch),
        "block_out_channels": vae_ch, "layers_per_block": 1, "latent_channels": int(latent_channels),
        "norm_num_groups": _groups(vae_ch, "--vae-ch"),
    }


_CLASSES = {"unet2d": "UNet2DModel", "unet2d_condition": "UNet2DConditionModel", "dit": "DiTTransformer2DModel",
            "vae": "AutoencoderKL"}


def build(kind: str, config: dict[str, Any]):
    diffusers = _diffusers(f"training a {_CLASSES[kind]} target")
    from ..models.diffusers_weights import quiet_diffusers

    with quiet_diffusers(diffusers):
        net = getattr(diffusers, _CLASSES[kind])(**config)
    if kind == "dit":
        disable_builtin_label_dropout(net)
    return net


def disable_builtin_label_dropout(net) -> None:
    """DiT's label embedders drop labels with the global RNG at a fixed 10%; training draws its own (seeded) drop.

    The table keeps its extra row (index num_classes, the null class): only the hidden random
    drop is switched off, which is not part of the saved config.
    """
    for module in net.modules():
        if type(module).__name__ == "LabelEmbedding":
            module.dropout_prob = 0.0
