"""The training losses of the diffusers targets: DDPM eps-prediction, flow matching (rectified flow), classifier-free condition drop."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..schedule import Schedule

__all__ = ["OBJECTIVES", "FLOW_TIMESTEPS", "ddpm_loss", "flow_matching_loss", "sample_flow_s", "drop_condition",
           "DenoiserObjective"]

OBJECTIVES = ("ddpm", "flow")
# How flow matching draws s: "uniform" on [0, 1], or SD3's "logit-normal" s = sigmoid(n), n ~ N(0, 1).
FLOW_TIMESTEPS = ("uniform", "logit-normal")

Predict = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]  # (x, timestep, cond) -> prediction


def ddpm_loss(predict: Predict, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, cond,
              sqrt_abar: torch.Tensor, sqrt_one_minus_abar: torch.Tensor) -> torch.Tensor:
    """mean (eps_theta(x_t, t) - eps)^2 with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (t: int64 [N])."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    x_t = sqrt_abar[t].view(shape) * x0 + sqrt_one_minus_abar[t].view(shape) * eps
    return F.mse_loss(predict(x_t, t, cond).float(), eps)


def flow_matching_loss(predict: Predict, x0: torch.Tensor, s: torch.Tensor, eps: torch.Tensor, cond,
                       T: int = 1000) -> torch.Tensor:
    """mean (v_theta(x_s, s T) - (eps - x0))^2 with x_s = (1 - s) x0 + s eps (s: float [N] in [0, 1]).

    The network sees the continuous timestep s * T, as diffusers' FlowMatchEulerDiscreteScheduler
    feeds it (sigma * num_train_timesteps); the scorer's integer t = s T lies on that scale.
    """
    view = s.view((-1,) + (1,) * (x0.dim() - 1))
    x_s = (1.0 - view) * x0 + view * eps
    return F.mse_loss(predict(x_s, s * T, cond).float(), eps - x0)


def sample_flow_s(batch: int, how: str, generator: torch.Generator, device) -> torch.Tensor:
    if how == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if how == "logit-normal":
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    raise ConfigError(f"--flow-timesteps = {how!r} is unknown; use one of {', '.join(FLOW_TIMESTEPS)}")


def drop_condition(batch: int, rate: float, generator: torch.Generator, device) -> torch.Tensor:
    """bool [batch]: which rows get the null condition (classifier-free guidance training), each with probability rate."""
    return torch.rand(batch, generator=generator, device=device) < rate


class DenoiserObjective:
    """One training step's loss for a denoiser, drawing t (or s) and the noise from the training's noise generator.

    Draw order per step (fixed, so that resumed runs see the same numbers): condition drop,
    then t or s, then the noise.
    """

    def __init__(self, objective: str, schedule: Schedule | None, T: int, flow_timesteps: str = "uniform",
                 device=None):
        if objective not in OBJECTIVES:
            raise ConfigError(f"--objective = {objective!r} is unknown; use one of {', '.join(OBJECTIVES)}")
        if flow_timesteps not in FLOW_TIMESTEPS:
            raise ConfigError(f"--flow-timesteps = {flow_timesteps!r} is unknown; use one of {', '.join(FLOW_TIMESTEPS)}")
        self.objective, self.T, self.flow_timesteps = objective, int(T), flow_timesteps
        if objective == "ddpm":
            abar = torch.tensor(schedule.abar, dtype=torch.float64)  # abar is a read-only array
            self.sqrt_abar = abar.sqrt().float().to(device)
            self.sqrt_one_minus_abar = (1.0 - abar).sqrt().float().to(device)

    def __call__(self, predict: Predict, x0: torch.Tensor, cond, generator: torch.Generator) -> torch.Tensor:
        batch, device = x0.shape[0], x0.device
        if self.objective == "ddpm":
            t = torch.randint(0, self.T, (batch,), generator=generator, device=device)
            eps = torch.randn(x0.shape, generator=generator, device=device)
            return ddpm_loss(predict, x0, t, eps, cond, self.sqrt_abar, self.sqrt_one_minus_abar)
        s = sample_flow_s(batch, self.flow_timesteps, generator, device)
        eps = torch.randn(x0.shape, generator=generator, device=device)
        return flow_matching_loss(predict, x0, s, eps, cond, self.T)
