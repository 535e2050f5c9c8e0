"""The regressor network: B small residual CNNs run as one grouped network (B = 1: a plain residual CNN)."""
from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _grouped_conv(n_models: int, c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False):
    # groups=n_models keeps the bag's members apart: model j sees only its own channel block.
    return nn.Conv2d(n_models * c_in, n_models * c_out, kernel, stride=stride, padding=kernel // 2,
                     groups=n_models, bias=bias)


class _ResidualBlock(nn.Module):
    def __init__(self, n_models: int, channels: int):
        super().__init__()
        self.conv1 = _grouped_conv(n_models, channels, channels, 3)
        self.norm1 = nn.BatchNorm2d(n_models * channels)
        self.conv2 = _grouped_conv(n_models, channels, channels, 3)
        self.norm2 = nn.BatchNorm2d(n_models * channels)
        # The block starts as the identity, which keeps early training of a deep stack stable.
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(out)))


class BaggedResNet(nn.Module):
    """`n_models` independent residual CNNs run as one network through grouped convolutions.

    Input: N x (n_models * C) x H x W, channel block j being model j's input (or N x C x H x W,
    shared by all). Output: N x n_models x n_levels quantiles, in standardised target units.
    With n_models = 1 it is a plain residual CNN; the bag's parameters are the members'
    parameters concatenated, so members can be trained apart and stacked (`stack_models`).
    """

    def __init__(self, n_models: int, in_channels: int, n_levels: int, width: int = 16,
                 depth: int = 2, head_width: int = 64, monotone: bool = True, stem_stride: int = 1,
                 head: str = "quantile", levels: Sequence[float] | None = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "gaussian" and (levels is None or len(levels) != n_levels):
            raise ValueError("a gaussian head needs the quantile levels it reports")
        self.n_models, self.in_channels, self.n_levels = n_models, in_channels, n_levels
        self.head = head
        self.arch = dict(in_channels=in_channels, n_levels=n_levels, width=width, depth=depth,
                         head_width=head_width, monotone=monotone, stem_stride=stem_stride, head=head,
                         levels=None if levels is None else [float(v) for v in levels])
        self.monotone = monotone and n_levels > 1 and head == "quantile"
        # Gaussian head: (mu, log sigma) per member; its quantiles are mu + sigma * Phi^-1(level).
        z = [NormalDist().inv_cdf(float(v)) for v in levels] if head == "gaussian" else [0.0] * n_levels
        self.register_buffer("z_levels", torch.tensor(z, dtype=torch.float32), persistent=False)
        n_outputs = 2 if head == "gaussian" else n_levels
        # A patchifying stem: full-resolution convolutions would cost most of the compute
        # for little gain in predicting one number per image.
        if stem_stride == 1:
            self.stem = _grouped_conv(n_models, in_channels, width, 3)
        else:
            self.stem = nn.Conv2d(n_models * in_channels, n_models * width, stem_stride, stride=stem_stride,
                                  groups=n_models, bias=False)
        self.stem_norm = nn.BatchNorm2d(n_models * width)
        stages = []
        channels = width
        for stage in range(depth):
            out_channels = width * 2 ** stage
            if stage > 0:
                stages += [_grouped_conv(n_models, channels, out_channels, 3, stride=2),
                           nn.BatchNorm2d(n_models * out_channels), nn.ReLU()]
            stages.append(_ResidualBlock(n_models, out_channels))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.head_hidden = _grouped_conv(n_models, channels, head_width, 1, bias=True)
        self.head_out = _grouped_conv(n_models, head_width, n_outputs, 1, bias=True)
        # Start near a constant prediction, which `init_output` then sets to the marginal quantiles.
        with torch.no_grad():
            self.head_out.weight.mul_(0.1)

    def head_outputs(self, x):
        """The head's raw outputs N x n_models x (n_levels, or 2 = (mu, log sigma) for a gaussian head)."""
        if x.shape[1] == self.in_channels and self.n_models > 1:
            x = x.repeat(1, self.n_models, 1, 1)
        h = F.relu(self.stem_norm(self.stem(x)))
        h = self.stages(h)
        h = h.mean(dim=(2, 3), keepdim=True)
        out = self.head_out(F.relu(self.head_hidden(h)))
        return out.view(x.shape[0], self.n_models, -1)

    def forward(self, x):
        """Quantiles N x n_models x n_levels (standardised target units), increasing in the level where monotone."""
        out = self.head_outputs(x)
        if self.head == "gaussian":
            mu, log_sigma = out[..., :1], out[..., 1:2].clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT)
            return mu + torch.exp(log_sigma) * self.z_levels
        if self.monotone:
            out = torch.cat([out[..., :1], out[..., :1] + torch.cumsum(F.softplus(out[..., 1:]), -1)], -1)
        return out

    @torch.no_grad()
    def init_output(self, quantiles: Sequence[float]) -> None:
        """Set every member's output bias so that it starts at the given (standardised) quantiles."""
        values = torch.tensor(list(quantiles), dtype=torch.float32)
        if self.head == "gaussian":
            # Standardised targets: mean 0, sd 1, so the head starts at N(0, 1).
            values = torch.zeros(2)
        elif self.monotone:
            steps = torch.clamp(values[1:] - values[:-1], min=1e-3)
            values = torch.cat([values[:1], steps + torch.log(-torch.expm1(-steps))])  # softplus^-1
        self.head_out.bias.copy_(values.repeat(self.n_models))


HEADS = ("quantile", "gaussian")
LOG_SIGMA_LIMIT = 7.0  # exp(+-7) standard deviations: far outside any standardised target, and no overflow


def gaussian_nll(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise Gaussian negative log-likelihood (without the constant) of target under head outputs (mu, log sigma)."""
    mu, log_sigma = outputs[..., 0], outputs[..., 1].clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT)
    return log_sigma + 0.5 * ((target - mu) * torch.exp(-log_sigma)) ** 2


def auto_stem_stride(height: int, width: int) -> int:
    """The largest power-of-two patch size that still leaves the first stage at least 7 x 7 pixels."""
    stride = 1
    while min(height, width) // (2 * stride) >= 7:
        stride *= 2
    return stride


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stack_models(members: Sequence[BaggedResNet]) -> BaggedResNet:
    """One grouped network holding the given members (each itself a bag, usually of one) in order."""
    arch = members[0].arch
    stacked = BaggedResNet(sum(m.n_models for m in members), **arch)
    states = [m.state_dict() for m in members]
    merged = {}
    for key, value in stacked.state_dict().items():
        if value.ndim == 0:  # BatchNorm's step counter
            merged[key] = states[0][key]
        else:
            merged[key] = torch.cat([s[key] for s in states], dim=0)
    stacked.load_state_dict(merged)
    return stacked.to(next(members[0].parameters()).device)
