"""Small models shared by the tests: a tiny pytorch-ddpm UNet and its eps-model, with weights large enough to matter."""
from __future__ import annotations

import numpy as np
import torch

from qmia_fast.models import EpsModel, UNet, save_model
from qmia_fast.schedule import linear_schedule

# The storage dtypes every kernel takes (float32 arithmetic inside); tests parametrize over them.
STORAGE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def tiny_unet(channels: int = 3, size: int = 8, attn=(1,), seed: int = 0, perturb: float = 0.2) -> UNet:
    """A 2-level, 32-channel UNet. DDPM's initialisation leaves the output near zero (eps ~ 0 makes
    t-errors vanish into float32 rounding), so the weights are perturbed by `perturb` * N(0, 1)."""
    torch.manual_seed(seed)
    net = UNet(T=1000, ch=32, ch_mult=(1, 2), attn=attn, num_res_blocks=1, dropout=0.0, in_ch=channels,
               img_size=size)
    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(perturb * torch.randn_like(p))
    return net.eval()


def tiny_model(channels: int = 3, size: int = 8, seed: int = 0, cls=EpsModel, **unet) -> EpsModel:
    """tiny_unet wrapped as an eps-model with the linear DDPM schedule (`cls`: an EpsModel subclass)."""
    net = tiny_unet(channels, size, seed=seed, **unet)
    return cls(net, linear_schedule(), (channels, size, size), {"kind": "test"}, format="test").eval()


def random_images(n: int, channels: int = 3, size: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def write_tiny_target(root, n_images: int, member_step: int | None = None, perturb: float = 0.2):
    """root/model (a tiny 1 x 8 x 8 UNet, no attention), root/images.npy (n_images random images) and, with a
    member_step, root/members.npy (every member_step-th image): the inputs of a small CLI or API run."""
    save_model(tiny_unet(1, 8, attn=(), perturb=perturb), root / "model", linear_schedule())
    np.save(root / "images.npy", random_images(n_images, channels=1))
    if member_step is not None:
        np.save(root / "members.npy", np.arange(0, n_images, member_step))
    return root


def tiny_diffusers_unet(out_channels: int = 3):
    """A diffusers UNet2DModel for 3 x 8 x 8 images with one attention level (skips the test without diffusers)."""
    import pytest

    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=32,
    )
