"""Target diffusion models: the built-in DDPM UNet, loaders for pytorch-ddpm, diffusers (pixel, latent, conditional, DiT, flow, LoRA), TorchScript and our format, and wrap_denoiser."""
from __future__ import annotations

from .denoiser import wrap_denoiser
from .loader import BUILTIN_TARGET_DIR, FORMATS, detect_format, load_model
from .qmia_format import save_model
from .unet import CIFAR10_UNET_CONFIG, UNet, count_parameters, normalize_unet_config
from .wrapper import Conditioning, EpsModel, check_image_shape

__all__ = [
    "load_model",
    "wrap_denoiser",
    "save_model",
    "detect_format",
    "check_image_shape",
    "EpsModel",
    "Conditioning",
    "UNet",
    "CIFAR10_UNET_CONFIG",
    "normalize_unet_config",
    "count_parameters",
    "FORMATS",
    "BUILTIN_TARGET_DIR",
]
