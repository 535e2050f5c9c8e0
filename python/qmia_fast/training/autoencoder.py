"""The latent targets' VAE: an AutoencoderKL trained on non-member images only, its LDM scaling factor, and member latents."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .architectures import build
from .folders import export_component
from .loop import Stage

__all__ = ["VAE_CHECKPOINT_NAME", "vae_stage", "scaling_factor", "encode_latents", "check_disjoint_from_members",
           "load_vae", "weights_digest", "SCALING_IMAGES"]

VAE_CHECKPOINT_NAME = "vae_checkpoint.pt"
SCALING_IMAGES = 2048  # the scaling factor's std is taken over this many of the VAE's own images


def _pixels(images: torch.Tensor) -> torch.Tensor:
    divisor = 127.5 if images.dtype == torch.uint8 else 0.5
    return images.float().div_(divisor).sub_(1.0)


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator, kl_weight: float) -> torch.Tensor:
    """mean (decode(z) - x)^2 + kl_weight * mean KL(q(z|x) || N(0, I)), z ~ q(z|x) (reparametrised)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator, device=x.device)
    reconstruction = vae.decode(z).sample
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar)
    return F.mse_loss(reconstruction.float(), x) + kl_weight * kl.float().mean()


def vae_stage(images: np.ndarray, folder: Path, config: dict[str, Any], hparams: dict[str, Any],
              kl_weight: float, hflip: bool, device: torch.device) -> Stage:
    """The VAE's training stage; the finished VAE (with its scaling factor) is exported to `folder`."""
    from .common import data_digest

    data = torch.from_numpy(images).to(device)

    def loss(vae, index, generator):
        x = _pixels(data[index])
        if hflip:
            flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return vae_loss(vae, x, generator, kl_weight)

    def export(vae, step):
        if step >= hparams["steps"]:  # only the finished VAE is exported: the denoiser is trained on it
            vae.register_to_config(scaling_factor=scaling_factor(vae, images, device))
            export_component(vae, folder)

    return Stage(
        name="vae", checkpoint_name=VAE_CHECKPOINT_NAME,
        fingerprint={"vae": config, "kl_weight": float(kl_weight), "hflip": bool(hflip),
                     "vae_data": {"n_images": int(len(images)), "shape": list(images.shape[1:]),
                                  "sha256": data_digest(images)}},
        hparams=hparams, n_items=len(images), build=lambda: build("vae", config), loss=loss, export=export,
    )


@torch.no_grad()
def _posterior_means(vae, images: np.ndarray, device, batch: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(images), batch):
        x = _pixels(torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).to(device))
        out.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(out)


def scaling_factor(vae, images: np.ndarray, device) -> float:
    """1 / std of the posterior means over (up to SCALING_IMAGES of) the VAE's own images, as LDM sets it."""
    means = _posterior_means(vae.eval(), images[:SCALING_IMAGES], device)
    std = float(means.flatten().std())
    if not np.isfinite(std) or std <= 0:
        raise ConfigError("the VAE's latents have zero spread; train the VAE longer (--vae-steps) or check its data")
    return 1.0 / std


def encode_latents(vae, images: np.ndarray, device, hflip: bool = False) -> torch.Tensor:
    """z0 = posterior mean * scaling_factor of each image (and of its mirror image after them when hflip)."""
    factor = float(vae.config.scaling_factor)
    latents = _posterior_means(vae.eval(), images, device) * factor
    if hflip:
        latents = torch.cat([latents, _posterior_means(vae, np.ascontiguousarray(images[..., ::-1]), device) * factor])
    return latents


def check_disjoint_from_members(vae_images: np.ndarray, members: np.ndarray) -> None:
    """A ConfigError if any VAE image equals a member image byte for byte: the VAE must not see the members."""
    member_digests = {hashlib.sha256(image.tobytes()).digest() for image in members}
    shared = [i for i, image in enumerate(vae_images) if hashlib.sha256(image.tobytes()).digest() in member_digests]
    if shared:
        raise ConfigError(f"--vae-data: {len(shared)} of its {len(vae_images)} images equal member images (e.g. "
                          f"image {shared[0]}); the VAE must be trained on non-members only, so remove them")


def load_vae(path: str | Path, image_shape) -> Any:
    """A finished VAE to reuse (--vae FOLDER: an AutoencoderKL folder, or a target folder holding vae/)."""
    from ..errors import require_extra
    from ..models.diffusers_weights import quiet_diffusers

    diffusers = require_extra("diffusers", "diffusers", "reusing a VAE")
    folder = Path(path)
    for name in ("vae", "vqvae"):
        if (folder / name / "config.json").is_file():
            folder = folder / name
            break
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--vae {path}: no config.json (nor vae/ or vqvae/ with one) there; pass a latent target "
                          "trained by train-target or its AutoencoderKL folder")
    try:
        with quiet_diffusers(diffusers):
            vae = diffusers.AutoencoderKL.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--vae {path}: not a loadable AutoencoderKL folder ({str(exc).splitlines()[0][:160]})") from None
    config = vae.config
    if config.in_channels != image_shape[0]:
        raise ConfigError(f"--vae {path} takes {config.in_channels}-channel images but the data have {image_shape[0]}")
    factor = 2 ** (len(config.block_out_channels) - 1)
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ConfigError(f"--vae {path} down-samples by {factor}, which does not divide the {image_shape[1]} x "
                          f"{image_shape[2]} images")
    return vae.eval().requires_grad_(False)


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
