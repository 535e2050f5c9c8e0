"""Benchmark targets of the newer families (a latent UNet behind a VAE, SD-shaped at a small size; a class-conditional DiT) and their plain-diffusers SecMI loop."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import require_extra

FAMILY_NAMES = ("latent", "dit")
_IMAGE = (3, 64, 64)  # pixels; the VAE down-samples 4x to 4 x 16 x 16 latents
_CLASSES = 10


def _perturbed(module: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    # diffusers zero-initialises output layers; random weights of the usual size keep the outputs O(1).
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return module.eval()


def _vae(diffusers):
    torch.manual_seed(0)
    return _perturbed(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=32, sample_size=_IMAGE[1], scaling_factor=0.18215), 0)


def _write_family(name: str, root: Path, diffusers) -> Path:
    """A diffusers pipeline folder of the family with seeded random weights."""
    _vae(diffusers).save_pretrained(root / "vae")
    latent = _IMAGE[1] // 4
    torch.manual_seed(1)
    if name == "latent":
        # An SD-shaped UNet at a small size: four levels, attention in the two lower ones.
        _perturbed(diffusers.UNet2DModel(
            sample_size=latent, in_channels=4, out_channels=4, block_out_channels=(64, 128, 192, 256),
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), layers_per_block=2,
            norm_num_groups=32, attention_head_dim=32), 1).save_pretrained(root / "unet")
    else:
        _perturbed(diffusers.DiTTransformer2DModel(
            num_attention_heads=6, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=6,
            sample_size=latent, patch_size=2, num_embeds_ada_norm=_CLASSES), 1).save_pretrained(root / "transformer")
    diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(
        root / "scheduler")
    return root


def build_family(name: str):
    """(EpsModel, description) of a family benchmark model, loaded with load_model from a temporary folder."""
    from ..models import count_parameters, load_model

    diffusers = require_extra("diffusers", "diffusers", f"the {name!r} benchmark model")
    with tempfile.TemporaryDirectory(prefix=f"qmia-bench-{name}-") as folder:
        model = load_model(_write_family(name, Path(folder), diffusers)).eval()
    denoiser = count_parameters(model.net)
    vae = count_parameters(model.latent)
    description = {"name": name, "weights": "random (seeded), perturbed", "image_shape": list(model.image_shape),
                   "latent_shape": list(model.input_shape), "parameters": denoiser, "vae_parameters": vae,
                   "config": {"denoiser": type(model.net).__name__, "vae": "AutoencoderKL",
                              "conditioning": None if model.conditioning is None else model.conditioning.kind}}
    return model, description


def benchmark_labels(n: int) -> np.ndarray:
    """The class labels the DiT row scores its images under."""
    return (np.arange(n) % _CLASSES).astype(np.int64)


class DiffusersLoop:
    """SecMI's t-error as a user would write it with diffusers: vae.encode(x).latent_dist.mean * scaling_factor,
    then DDIM steps in torch ops with the module's own call (`.sample`, the first C channels of a learned sigma)."""

    def __init__(self, model, device: torch.device, t_sec: int = 100, k: int = 10):
        import copy

        self.net = copy.deepcopy(model.net).to(device).eval()
        self.vae = copy.deepcopy(model.latent.vae).to(device).eval()
        self.scaling = float(self.vae.config.scaling_factor)
        self.abar = torch.from_numpy(np.array(model.schedule.abar, dtype=np.float64)).to(device)
        self.dit = model.conditioning is not None
        self.device, self.t_sec, self.k = device, t_sec, k
        self.description = f"diffusers {type(self.net).__name__} + AutoencoderKL, DDIM steps in torch ops"
        self.tf32 = {"cudnn": device.type == "cuda", "matmul": False}
        self.call_precision = "tf32" if self.tf32["cudnn"] else "fp32"

    def encode(self, images_uint8: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images_uint8).to(self.device).float() / 255.0 * 2.0 - 1.0
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mean * self.scaling

    def _eps(self, z: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
        with torch.no_grad():
            if self.dit:
                return self.net(z, timestep=t, class_labels=labels).sample[:, :z.shape[1]]
            return self.net(z, t).sample

    def _step(self, z, t_c: int, t_n: int, labels):
        t = torch.full((z.shape[0],), t_c, dtype=torch.long, device=z.device)
        a_c, a_n = self.abar[t_c].float(), self.abar[t_n].float()
        eps = self._eps(z, t, labels)
        z0 = (z - (1 - a_c).sqrt() * eps) / a_c.sqrt()
        return a_n.sqrt() * z0 + (1 - a_n).sqrt() * eps

    def score_batch(self, images_uint8: np.ndarray, start: int = 0) -> np.ndarray:
        z = self.encode(images_uint8)
        labels = torch.from_numpy(benchmark_labels(start + len(z))[start:]).to(self.device) if self.dit else None
        for t_c in range(0, self.t_sec - self.k, self.k):
            z = self._step(z, t_c, t_c + self.k, labels)
        tilde = z
        back = self._step(self._step(tilde, self.t_sec - self.k, self.t_sec, labels), self.t_sec,
                          self.t_sec - self.k, labels)
        return ((back - tilde) ** 2).flatten(1).sum(1).cpu().numpy().astype(np.float64)

    def score(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([self.score_batch(images[i:i + batch_size], i)
                               for i in range(0, len(images), batch_size)])
