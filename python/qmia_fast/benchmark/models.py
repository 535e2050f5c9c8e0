"""The models `qmia-fast bench` times and the plain-PyTorch SecMI loop it times them against."""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

MODEL_NAMES = ("demo", "cifar10", "latent", "dit")


# PyTorch's shipped settings, which the baseline runs with on CUDA as a user's loop would:
# cuDNN may use TF32 for convolutions, matrix multiplies stay float32.
TORCH_DEFAULT_TF32 = {"cudnn": True, "matmul": False}


def _random_unet(unet_class, config: dict) -> torch.nn.Module:
    """A UNet with every convolution and linear layer drawn with xavier gain 1, seeded.

    DDPM's initialisation (gain 1e-5 on the last layer of each residual branch and on the
    output) makes eps ~ 0, and with eps ~ 0 the t-error's round trip is exact up to float32
    rounding: scores would be rounding noise and comparing implementations meaningless.
    Gain 1 gives O(1) noise predictions (t-errors ~1e-5 per pixel). Throughput is the same.
    """
    torch.manual_seed(0)
    net = unet_class(**config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.xavier_uniform_(module.weight, gain=1.0)
    return net.eval()


def _explicit_attention(self, x: torch.Tensor) -> torch.Tensor:
    # pytorch-ddpm's AttnBlock.forward as SecMI runs it: q k^T by bmm, softmax, then bmm with v.
    batch, channels, height, width = x.shape
    h = self.group_norm(x)
    q = self.proj_q(h).permute(0, 2, 3, 1).view(batch, height * width, channels)
    k = self.proj_k(h).view(batch, channels, height * width)
    w = torch.bmm(q, k) * (int(channels) ** (-0.5))
    w = F.softmax(w, dim=-1)
    v = self.proj_v(h).permute(0, 2, 3, 1).view(batch, height * width, channels)
    h = torch.bmm(w, v)
    h = h.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return x + self.proj(h)


def reference_unet(net: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """A copy of `net` that runs as pytorch-ddpm's UNet does (explicit bmm + softmax attention), same weights.

    Returns (module, what it is). Networks other than our pytorch-ddpm-compatible UNet are
    copied unchanged.
    """
    from ..models.unet import AttnBlock, UNet

    reference = copy.deepcopy(net)
    if not isinstance(net, UNet):
        return reference, f"{type(net).__name__} (copied unchanged)"
    reference.set_fused(False)  # torch's own layers, whatever the copied model was set to
    patched = 0
    for module in reference.modules():
        if isinstance(module, AttnBlock):
            module.forward = _explicit_attention.__get__(module, AttnBlock)
            patched += 1
    return reference, f"pytorch-ddpm UNet (explicit bmm+softmax attention in {patched} blocks), same weights"


@contextlib.contextmanager
def cuda_tf32(cudnn: bool, matmul: bool):
    """Set whether cuDNN convolutions and CUDA matrix multiplies may use TF32; restores the caller's settings."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class SecmiBaseline:
    """SecMI's t-error as its reference code runs it: fp32, eager, channels-first, one DDIM step at a time in torch ops.

    Each step gathers its coefficients from the float64 abar table and casts them to
    float32 per call, as SecMI's `ddim_singlestep` does; the UNet is pytorch-ddpm's
    (see reference_unet). A batch is uploaded, scored and brought back to the host. On
    CUDA it runs with PyTorch's default TF32 settings, or with TF32 off (`strict`).
    """

    def __init__(self, model, device: torch.device, t_sec: int = 100, k: int = 10, strict: bool = False):
        net = getattr(model, "net", model)
        self.net, self.description = reference_unet(net)
        self.net = self.net.to(device).eval()
        self.device = device
        self.abar = torch.from_numpy(np.array(model.schedule.abar, dtype=np.float64)).to(device)
        self.t_sec, self.k = t_sec, k
        on_cuda_defaults = device.type == "cuda" and not strict
        self.tf32 = dict(TORCH_DEFAULT_TF32) if on_cuda_defaults else {"cudnn": False, "matmul": False}
        # What its UNet calls run at, for the FLOP rate's reference (convolutions dominate).
        self.call_precision = "tf32" if self.tf32["cudnn"] else "fp32"

    def _coefficient(self, t_index: torch.Tensor) -> torch.Tensor:
        return torch.gather(self.abar, 0, t_index).float().view(-1, 1, 1, 1)

    def _step(self, x: torch.Tensor, t_c: int, t_target: int) -> torch.Tensor:
        t_c_index = x.new_ones([x.shape[0]], dtype=torch.long) * t_c
        t_target_index = x.new_ones([x.shape[0]], dtype=torch.long) * t_target
        abar_c, abar_target = self._coefficient(t_c_index), self._coefficient(t_target_index)
        with torch.no_grad(), cuda_tf32(**self.tf32):
            eps = self.net(x, t_c_index)
        x0_pred = (x - (1 - abar_c).sqrt() * eps) / abar_c.sqrt()
        return abar_target.sqrt() * x0_pred + (1 - abar_target).sqrt() * eps

    def score_batch(self, images_uint8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images_uint8).to(self.device).float() / 255.0 * 2.0 - 1.0
        t_sec, k = self.t_sec, self.k
        for t_c in range(0, t_sec - k, k):
            x = self._step(x, t_c, t_c + k)
        x_tilde = x
        x_up = self._step(x_tilde, t_sec - k, t_sec)
        x_back = self._step(x_up, t_sec, t_sec - k)
        return ((x_back - x_tilde) ** 2).flatten(1).sum(1).cpu().numpy().astype(np.float64)

    def score(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return np.concatenate([self.score_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def build_model(name: str, device: torch.device | str = "cpu"):
    """(EpsModel, description) for a benchmark model name: 'demo', 'cifar10', 'latent' or 'dit'.

    'demo' is the shipped, trained demo target; 'cifar10' is the 35.7M-parameter CIFAR-10
    DDPM architecture with random weights (throughput does not depend on their values);
    'latent' and 'dit' are diffusers models behind a VAE (benchmark/families.py).
    """
    if name in ("latent", "dit"):
        from .families import build_family

        return build_family(name)
    from ..models import BUILTIN_TARGET_DIR, CIFAR10_UNET_CONFIG, EpsModel, UNet, count_parameters, load_model
    from ..schedule import linear_schedule

    if name == "demo":
        if not (BUILTIN_TARGET_DIR / "config.json").is_file():
            raise ConfigError(f"the demo benchmark model is the shipped target, missing from {BUILTIN_TARGET_DIR}; "
                              "reinstall qmia-fast or use --models cifar10")
        model, weights = load_model("builtin"), "trained (assets/demo_target)"
    elif name == "cifar10":
        net = _random_unet(UNet, {**CIFAR10_UNET_CONFIG, "dropout": 0.0})
        model = EpsModel(net, linear_schedule(), net.image_shape, {"kind": "benchmark", **net.config},
                         format="benchmark")
        weights = "random, xavier gain 1"
    else:
        raise ConfigError(f"benchmark model {name!r} is unknown; use one of {', '.join(MODEL_NAMES)}")
    model = model.eval()
    net = getattr(model, "net", model)
    description = {"name": name, "weights": weights, "image_shape": list(model.image_shape),
                   "parameters": count_parameters(net) if isinstance(net, torch.nn.Module) else None,
                   "config": dict(getattr(net, "config", {}))}
    return model, description


def unet_flops_per_image(model, device: torch.device) -> float:
    """Floating-point operations of one UNet call on one image (torch.utils.flop_counter; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..plan_probe import probe_condition

    x = torch.zeros(2, *getattr(model, "input_shape", model.image_shape), device=device)
    t = torch.full((2,), 10, dtype=torch.long, device=device)
    cond = probe_condition(model, 2, device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t) if cond is None else model(x, t, cond)
    return counter.get_total_flops() / 2
