"""Regressor inputs: images and optional extra channels as checked CPU tensors, and their per-channel standardisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..arrays import to_tensor
from ..errors import InputError


def as_image_tensor(images, name: str = "images") -> torch.Tensor:
    """uint8 N x C x H x W, or floats in [0, 1], from numpy or torch -> a CPU tensor (uint8 kept as is)."""
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "uif":
            raise InputError(f"{name} must be uint8 or float, got dtype {images.dtype}")
        tensor = to_tensor(images)
    elif isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
    else:
        raise InputError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    if tensor.ndim != 4:
        raise InputError(f"{name} must be N x C x H x W, got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or min(tensor.shape[1:]) == 0:
        raise InputError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point():
        raise InputError(f"{name} must be uint8 in [0, 255] or float in [0, 1], got dtype {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name} holds NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"float {name} must lie in [0, 1] (got [{low:.3g}, {high:.3g}]); "
                         "pass uint8 pixels or divide by 255")
    return tensor.contiguous()


def as_aux_tensor(aux, images: torch.Tensor, name: str = "aux") -> torch.Tensor | None:
    """Optional extra per-pixel feature channels N x K x H x W, finite floats, matching the images."""
    if aux is None:
        return None
    tensor = to_tensor(aux) if isinstance(aux, np.ndarray) else aux
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name} must be a numpy array or torch tensor, got {type(aux).__name__}")
    tensor = tensor.detach().cpu().float()
    if tensor.ndim != 4 or tensor.shape[0] != images.shape[0] or tensor.shape[2:] != images.shape[2:]:
        raise InputError(f"{name} must be N x K x H x W with the images' N, H, W "
                         f"{(images.shape[0], images.shape[2], images.shape[3])}, got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return tensor.contiguous()


@dataclass
class ChannelScaler:
    """Per-channel standardisation of image (after scaling to [0, 1]) and aux channels, fitted on the public set."""

    mean: list[float]
    std: list[float]
    n_image_channels: int

    @classmethod
    def fit(cls, images: torch.Tensor, aux: torch.Tensor | None) -> "ChannelScaler":
        means, stds = [], []
        for channel in _channels_01(images):
            means.append(float(channel.mean()))
            stds.append(float(channel.std()) if channel.numel() > 1 else 1.0)
        for channel in (aux.unbind(1) if aux is not None else ()):
            means.append(float(channel.mean()))
            stds.append(float(channel.std()) if channel.numel() > 1 else 1.0)
        # A constant channel carries no information; dividing by ~0 would only amplify noise.
        stds = [s if s > 1e-6 else 1.0 for s in stds]
        return cls(means, stds, int(images.shape[1]))

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    def transform(self, images: torch.Tensor, aux: torch.Tensor | None) -> torch.Tensor:
        """Images (+ aux) of one batch -> standardised float32 N x (C + K) x H x W on the images' device."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if aux is not None:
            x = torch.cat([x, aux.float()], dim=1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _channels_01(images: torch.Tensor):
    for channel in images.unbind(1):
        yield channel.double() / 255.0 if images.dtype == torch.uint8 else channel.double()
