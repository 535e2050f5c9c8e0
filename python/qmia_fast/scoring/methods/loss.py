"""The denoising loss at one timestep: noise x0 with the sample's own Philox noise and measure the prediction's squared error."""
from __future__ import annotations

from ... import kernels
from ...errors import ConfigError
from .base import ScoreMethod, check_t


class Loss(ScoreMethod):
    name = "loss"
    title = "denoising loss"
    settings = ("t", "n_draws")

    def check(self, config, T: int) -> None:
        check_t(config, T)
        if config.n_draws < 1:
            raise ConfigError(f"n_draws = {config.n_draws} must be at least 1")

    def unet_calls(self, config) -> int:
        return config.n_draws

    def prepare(self, config, schedule):
        # x_t = a x0 + b eps; the prediction's target is eps - w x0 (w = 0: eps; w = 1: the velocity eps - x0).
        return (*schedule.noise_coefficients(config.t), float(schedule.loss_x0_weight))

    def compute(self, ctx, x0, samples, cond, prepared):
        a, b, w = prepared
        cfg = ctx.config
        total = None
        for draw in range(cfg.n_draws):
            x_t = kernels.noise_inject(x0, a, b, cfg.seed, stream=draw, samples=samples)
            pred = ctx.pred(x_t, cfg.t, cond, ctx.inversion)
            if w:
                pred = kernels.ddim_step(x0, pred, w, 1.0)  # pred + w x0, compared with eps below
            err = kernels.eps_sq_error(pred, cfg.seed, stream=draw, samples=samples)
            total = err if total is None else total + err
        return total / cfg.n_draws if cfg.n_draws > 1 else total


METHOD = Loss()
