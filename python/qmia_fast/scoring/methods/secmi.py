"""SecMI's t-error (Duan et al., ICML 2023) as its reference code runs it: deterministic inversion to t_sec - k, one step up and one back, squared distance."""
from __future__ import annotations

from ... import kernels
from ...errors import ConfigError
from .base import ScoreMethod


class SecMI(ScoreMethod):
    name = "secmi"
    title = "SecMI t-error"
    settings = ("t_sec", "k")

    def check(self, config, T: int) -> None:
        if config.k < 1:
            raise ConfigError(f"k = {config.k} must be a positive number of timesteps per DDIM step (SecMI uses 10)")
        if config.t_sec < config.k or config.t_sec % config.k:
            raise ConfigError(
                f"t_sec = {config.t_sec} must be a positive multiple of k = {config.k} "
                f"(SecMI inverts in steps of k up to t_sec; e.g. t_sec = {max(config.k, config.t_sec // config.k * config.k)})")
        if config.t_sec >= T:
            raise ConfigError(f"t_sec = {config.t_sec} is outside the schedule's timesteps [0, {T}); use t_sec < {T}")

    def unet_calls(self, config) -> int:
        return config.t_sec // config.k + 1

    def prepare(self, config, schedule):
        """(inversion steps [(t_cur, c1, c2)], the step up to t_sec, the step back down)."""
        times = list(range(0, config.t_sec, config.k))  # 0, k, ..., t_sec - k
        inversion = [(t_cur, *schedule.step_coefficients(t_cur, t_next)) for t_cur, t_next in zip(times[:-1], times[1:])]
        top = times[-1]
        up = (top, *schedule.step_coefficients(top, config.t_sec))
        down = (config.t_sec, *schedule.step_coefficients(config.t_sec, top))
        return inversion, up, down

    def compute(self, ctx, x0, samples, cond, prepared):
        inversion, (t_up, c1_up, c2_up), (t_down, c1_dn, c2_dn) = prepared
        # The inversion only has to land near x~; the round trip's two calls, whose difference is
        # the score, may run at a higher precision (the mixed variants).
        x = x0
        for t_cur, c1, c2 in inversion:
            x = kernels.ddim_step(x, ctx.pred(x, t_cur, cond, ctx.inversion), c1, c2)
        x_tilde = x
        x_up = kernels.ddim_step(x_tilde, ctx.pred(x_tilde, t_up, cond, ctx.round_trip), c1_up, c2_up)
        pred_down = ctx.pred(x_up, t_down, cond, ctx.round_trip)
        return kernels.ddim_step_sqerr(x_up, pred_down, c1_dn, c2_dn, x_tilde)


METHOD = SecMI()
