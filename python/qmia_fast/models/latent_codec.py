"""The latent space of a latent diffusion model: z0 = the VAE posterior mean (or VQ pre-quantisation latents) times the scaling factor."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelLoadError
from .diffusers_components import PreparedComponent, check_vae_sizes, prepare_component, run_on_meta

__all__ = ["VaeLatent", "VAE_CLASSES", "prepare_vae", "latent_shape"]

VAE_CLASSES = ("AutoencoderKL", "VQModel")


class VaeLatent(nn.Module):
    """encode(x) -> z0 for float pixels in [-1, 1], N x C x H x W, deterministically.

    AutoencoderKL: ``(posterior mean - shift_factor) * scaling_factor`` (shift_factor 0 unless the
    config sets one, as SD3-style VAEs do); VQModel: the encoder's pre-quantisation latents (after
    quant_conv) times ``scaling_factor``, as LDMPipeline divides them before decoding. The result
    is float32 whatever precision the VAE runs in.
    """

    def __init__(self, vae: nn.Module, kind: str):
        super().__init__()
        if kind not in VAE_CLASSES:
            raise InputError(f"latent kind {kind!r} is unknown; use one of {', '.join(VAE_CLASSES)}")
        self.vae = vae
        self.kind = kind
        config = vae.config
        self.scaling_factor = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0) if kind == "AutoencoderKL" else 0.0

    def _vae_dtype(self) -> torch.dtype:
        for tensor in self.vae.parameters():
            return tensor.dtype
        return torch.float32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"latent encode: x must be a float tensor N x C x H x W in [-1, 1], got {shape}")
        with torch.no_grad():
            x = x.to(self._vae_dtype())
            if self.kind == "AutoencoderKL":
                z = self.vae.encode(x).latent_dist.mean
            else:
                z = self.vae.encode(x).latents
            return ((z.float() - self.shift_factor) * self.scaling_factor).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    def describe(self) -> dict[str, Any]:
        return {"class": self.kind, "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}


def prepare_vae(folder: Path, config: dict, diffusers, trust_checkpoint: bool, role: str) -> PreparedComponent:
    """The VAE folder's config checked against its weights; AutoencoderKL or VQModel by _class_name."""
    class_name = config.get("_class_name")
    if class_name not in VAE_CLASSES:
        raise ModelLoadError(f"{role} {folder}: _class_name = {class_name!r:.60} is not a supported autoencoder; "
                             f"use one of {', '.join(VAE_CLASSES)}")
    for key in ("latents_mean", "latents_std"):
        if config.get(key) is not None:
            raise ModelLoadError(f"{role} {folder}: config.json sets {key}, a per-channel latent normalisation no "
                                 "supported pipeline applies; only scaling_factor (and shift_factor) are supported")
    scale = config.get("scaling_factor", 0.18215)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ModelLoadError(f"{role} {folder}: scaling_factor = {scale!r:.40} must be a positive number")
    shift = config.get("shift_factor")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float))
                              or not math.isfinite(shift)):
        raise ModelLoadError(f"{role} {folder}: shift_factor = {shift!r:.40} must be a number or null")
    return prepare_component(role, folder, getattr(diffusers, class_name), config, trust_checkpoint,
                             check_sizes=check_vae_sizes)


def downsampling(config: dict) -> int:
    """The VAE's spatial factor: every encoder level but the last halves the side."""
    levels = len(config.get("block_out_channels") or [64])
    return 2 ** max(levels - 1, 0)


def latent_shape(prepared: PreparedComponent, image_shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The latent C x h x w the VAE gives for image_shape, by one encode on the meta device (None without meta kernels)."""
    meta, kind = prepared.meta, prepared.class_name

    def run():
        out = meta.encode(torch.zeros(1, *image_shape))
        z = out.latent_dist.mean if kind == "AutoencoderKL" else out.latents
        return tuple(int(v) for v in z.shape[1:])

    return run_on_meta(run, f"{prepared.where}/config.json",
                       f"the autoencoder cannot encode {' x '.join(map(str, image_shape))} images")
