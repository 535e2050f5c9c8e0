"""What a score method is: the settings it reads, its checks, its UNet calls per image, and its computation on a micro-batch."""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch


class Context(Protocol):
    """What a method's compute() may use: the config, the schedule, the call precisions and the denoiser."""

    config: Any
    schedule: Any
    inversion: str    # precision of every call of loss and PIA, and of SecMI's inversion
    round_trip: str   # precision of SecMI's two round-trip calls

    def pred(self, x: torch.Tensor, t: int, cond, call: str) -> torch.Tensor:
        """The denoiser's float32 prediction (eps for a DDPM, the velocity for flow matching)."""


class ScoreMethod:
    """One membership score. Subclasses set `name`, `title`, `settings` and implement the hooks.

    All methods are written once for both processes: the schedule supplies the coefficients
    of the deterministic step, of noising and of PIA's x_t (schedule.step_coefficients,
    noise_coefficients, pia_coefficients, loss_x0_weight), so a DDPM and a flow-matching
    model run the same kernels.
    """

    name: str = ""
    title: str = ""
    settings: tuple[str, ...] = ()

    def check(self, config, T: int) -> None:
        """Raise ConfigError for settings that cannot work with a schedule of T steps."""

    def unet_calls(self, config) -> int:
        raise NotImplementedError

    def prepare(self, config, schedule) -> Any:
        """Per-scorer precomputation (e.g. step coefficients), handed back to compute()."""
        return None

    def compute(self, ctx: Context, x0: torch.Tensor, samples: torch.Tensor, cond, prepared: Any) -> torch.Tensor:
        """float32 [n] scores of x0 (the model's input space); noise of row i is keyed by samples[i]."""
        raise NotImplementedError


def check_t(config, T: int) -> None:
    """The loss's and PIA's timestep lies in the schedule."""
    from ...errors import ConfigError

    if not 0 <= config.t < T:
        raise ConfigError(f"t = {config.t} is outside the schedule's timesteps [0, {T}); use 0 <= t < {T}")


PredFn = Callable[[torch.Tensor, int, Any, str], torch.Tensor]
