"""A defended target: any eps-model whose noise prediction gets Gaussian noise of scale sigma added (output perturbation)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..models.wrapper import EpsModel
from ..seeds import check_seed

# Row keys are folded to this many bits before the timestep is added above them.
_KEY_BITS = 40


class NoisyEps(nn.Module):
    """eps(x, t) + sigma * n(x, t), n ~ N(0, I) keyed by the query itself.

    The noise is a deterministic function of (x, t): a hash of the row's float bits and the
    timestep key the Philox generator. So the defended model is an ordinary function (asking
    the same query twice returns the same answer, as a deployed model with a fixed noise seed
    would), scores stay reproducible and independent of batching, and the noise is fresh for
    every distinct query.
    """

    def __init__(self, model: nn.Module, sigma: float, seed: int = 0):
        super().__init__()
        self.inner = model
        self.register_buffer("sigma", torch.tensor(float(sigma), dtype=torch.float64))
        self.register_buffer("noise_seed", torch.tensor(check_seed(seed), dtype=torch.int64))
        self._sigma = float(sigma)
        self._seed = int(seed)
        self._weights: dict = {}

    def _row_keys(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bits = x.detach().float().contiguous().view(x.shape[0], -1).view(torch.int32).to(torch.int64)
        weights = self._weights.get((bits.shape[1], bits.device))
        if weights is None:
            generator = torch.Generator().manual_seed(self._seed + 1)
            # Multipliers below 2**12: each product stays below 2**43 and a row sum below 2**63.
            weights = torch.randint(1, 1 << 12, (bits.shape[1],), generator=generator, dtype=torch.int64)
            weights = weights.to(bits.device)
            self._weights[(bits.shape[1], bits.device)] = weights
        row = torch.remainder((bits * weights).sum(dim=1), 1 << _KEY_BITS)
        return row + t.to(torch.int64) * (1 << _KEY_BITS)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.inner(x, t)
        if self._sigma == 0.0:
            return eps
        from ..kernels import philox_normal

        noise = philox_normal(tuple(eps.shape), self._seed, device=eps.device, samples=self._row_keys(x, t))
        return eps + self._sigma * noise.to(eps.dtype)


def defended_model(model: EpsModel, sigma: float, seed: int = 0) -> EpsModel:
    """`model` with Gaussian output noise of scale `sigma` on its eps prediction (sigma = 0: unchanged outputs).

    Returns a new eps-model sharing the original's weights; its fingerprint (and so every
    score cache key) includes sigma and the noise seed.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"sigma = {sigma!r} must be a number >= 0 (the scale of the noise added to eps)")
    if sigma > 1e6:
        raise ConfigError(f"sigma = {sigma!r} is too large to mean anything; use a scale below 1e6")
    config = {**(getattr(model, "config", None) or {}),
              "defence": {"kind": "gaussian eps noise", "sigma": float(sigma), "seed": int(seed)}}
    return EpsModel(NoisyEps(model, sigma, seed), model.schedule, model.image_shape, config,
                    format=f"{model.format}+eps-noise")
