"""PIA (Kong et al., ICLR 2024): the model's own prediction at t = 0 as the noise, then the p-norm of the prediction error at t."""
from __future__ import annotations

import math

from ... import kernels
from ...errors import ConfigError
from .base import ScoreMethod, check_t

# PIA's exponent: beyond this the float32 sum of |error|^p overflows on ordinary images.
P_RANGE = (0.25, 32.0)


class PIA(ScoreMethod):
    name = "pia"
    title = "PIA"
    settings = ("t", "p")

    def check(self, config, T: int) -> None:
        check_t(config, T)
        if not (math.isfinite(config.p) and P_RANGE[0] <= config.p <= P_RANGE[1]):
            raise ConfigError(f"p = {config.p} must be in [{P_RANGE[0]:g}, {P_RANGE[1]:g}] (PIA uses 4; larger exponents "
                              "overflow float32 sums of |error|^p)")

    def unet_calls(self, config) -> int:
        return 2

    def prepare(self, config, schedule):
        return schedule.pia_coefficients(config.t)

    def compute(self, ctx, x0, samples, cond, prepared):
        a, b = prepared
        cfg = ctx.config
        pred0 = ctx.pred(x0, 0, cond, ctx.inversion)
        x_t = kernels.ddim_step(x0, pred0, a, b)
        return kernels.pnorm_error(ctx.pred(x_t, cfg.t, cond, ctx.inversion), pred0, cfg.p)


METHOD = PIA()
