"""Noise schedules in float64 with SecMI's 0-based timestep indexing: DDPM (linear, cosine, diffusers configs) and flow matching."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ConfigError

# DDPMs use 1000 steps; more than this is a malformed config, refused before any array is made.
MAX_STEPS = 100_000
# What a model's prediction means: "ddpm" models predict eps (after EpsModel's conversion of v and
# x0 predictions), "flow" models the velocity v = eps - x0 of x_s = (1 - s) x0 + s eps.
PROCESSES = ("ddpm", "flow")

__all__ = [
    "MAX_STEPS",
    "PROCESSES",
    "Schedule",
    "FlowSchedule",
    "linear_schedule",
    "cosine_schedule",
    "schedule_from_diffusers_config",
    "schedule_from_dict",
]


class Schedule:
    """Betas and cumulative alphas of a discrete diffusion process with T steps.

    Timesteps are 0-based as in SecMI's and pytorch-ddpm's code:
    ``abar[t] = prod_{s<=t} (1 - betas[s])`` for t = 0..T-1, so ``abar[0] = 1 - betas[0]``.
    Everything is float64; kernels receive float32 coefficients derived from it.
    """

    def __init__(self, betas, description: Mapping[str, Any] | None = None):
        try:
            betas = np.asarray(betas, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError("schedule: betas must be a flat list of numbers in (0, 1]") from None
        if betas.size > MAX_STEPS:
            raise ConfigError(f"schedule: {betas.size} betas; at most {MAX_STEPS} steps are supported")
        if betas.size == 0:
            raise ConfigError("schedule: betas is empty; a schedule needs at least one timestep")
        if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas > 1):
            bad = int(np.flatnonzero(~((betas > 0) & (betas <= 1)))[0])
            raise ConfigError(f"schedule: betas must lie in (0, 1]; betas[{bad}] = {betas[bad]!r}")
        betas.setflags(write=False)
        self.betas = betas
        abar = np.cumprod(1.0 - betas)
        abar.setflags(write=False)
        self.abar = abar
        # How the schedule was made, so that to_dict() can stay compact (a formula, not 1000 numbers).
        self._description = dict(description) if description is not None else None

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """The diffusers name for `abar`."""
        return self.abar

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        kind = (self._description or {}).get("kind", "betas")
        return f"Schedule(kind={kind!r}, T={self.T}, abar[0]={self.abar[0]:.6g}, abar[T-1]={self.abar[-1]:.6g})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.T == other.T and bool(np.array_equal(self.betas, other.betas))

    def __hash__(self) -> int:  # pragma: no cover - schedules are rarely dict keys
        return hash(self.betas.tobytes())

    # ------------------------------------------------------------------ lookups

    def check_timestep(self, t, name: str = "t"):
        """Return t as an int (scalar) or int64 numpy array, raising ConfigError if any value is outside [0, T)."""
        return _checked_timesteps(t, name, self.T, "the schedule's timesteps")

    def abar_at(self, t):
        """abar[t] in float64: a Python float for an int, else an array/tensor of t's shape (a tensor stays on its device)."""
        values = self.check_timestep(t)
        out = self.abar[values]
        return _like_input(t, out)

    def sqrt_abar_at(self, t):
        values = self.check_timestep(t)
        return _like_input(t, np.sqrt(self.abar[values]))

    def sqrt_one_minus_abar_at(self, t):
        values = self.check_timestep(t)
        return _like_input(t, np.sqrt(1.0 - self.abar[values]))

    def ddim_coefficients(self, t_cur, t_next):
        """Coefficients (c1, c2) of the deterministic DDIM step from t_cur to t_next: x_next = c1 * x + c2 * eps.

        With x0_hat = (x - sqrt(1 - abar_c) eps) / sqrt(abar_c) and
        x_next = sqrt(abar_n) x0_hat + sqrt(1 - abar_n) eps, both coefficients are
        c1 = sqrt(abar_n / abar_c) and c2 = sqrt(1 - abar_n) - sqrt(abar_n (1 - abar_c) / abar_c).
        Computed in float64; ints give floats, arrays/tensors give per-sample values (broadcast).
        """
        cur = self.check_timestep(t_cur, "t_cur")
        nxt = self.check_timestep(t_next, "t_next")
        abar_c = self.abar[cur]
        abar_n = self.abar[nxt]
        c1 = np.sqrt(abar_n / abar_c)
        c2 = np.sqrt(1.0 - abar_n) - np.sqrt(abar_n * (1.0 - abar_c) / abar_c)
        # A tensor argument decides the output's kind and device; else an array; else plain floats.
        template = next((t for t in (t_cur, t_next) if _is_tensor(t)), None)
        if template is None:
            template = t_cur if np.ndim(cur) > 0 or isinstance(t_cur, np.ndarray) else t_next
        return _like_input(template, c1), _like_input(template, c2)

    # ------------------------------------------------------------------ what the scores need (both processes)

    process = "ddpm"
    # loss: the prediction's target is eps - loss_x0_weight * x0 (eps for a DDPM, v = eps - x0 for flow).
    loss_x0_weight = 0.0

    def step_coefficients(self, t_cur: int, t_next: int) -> tuple[float, float]:
        """(c1, c2) of the deterministic step x_next = c1 x + c2 pred(x, t_cur): the DDIM step."""
        return self.ddim_coefficients(int(t_cur), int(t_next))

    def noise_coefficients(self, t: int) -> tuple[float, float]:
        """(a, b) of x_t = a x0 + b eps: (sqrt(abar_t), sqrt(1 - abar_t))."""
        return float(self.sqrt_abar_at(int(t))), float(self.sqrt_one_minus_abar_at(int(t)))

    def pia_coefficients(self, t: int) -> tuple[float, float]:
        """(a, b) of PIA's x_t = a x0 + b pred(x0, 0): the model's eps at t = 0 stands for the noise."""
        return self.noise_coefficients(t)

    def fingerprint_bytes(self) -> bytes:
        """What identifies the schedule in a run's identity."""
        return b"ddpm|" + np.asarray(self.betas, dtype=np.float64).tobytes()

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict:
        """A JSON-serialisable description that from_dict() turns back into an equal schedule."""
        if self._description is not None:
            rebuilt = schedule_from_dict(self._description)
            if rebuilt == self:
                return dict(self._description)
        return {"kind": "betas", "betas": [float(b) for b in self.betas]}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "Schedule":
        return schedule_from_dict(spec)


class FlowSchedule:
    """Flow matching (rectified flow, SD3-style): x_s = (1 - s) x0 + s eps for s in [0, 1], the model predicts v = eps - x0.

    Timesteps are the integer grid t = 0..T-1 with s = t / T, and the model is called with
    the timestep t itself (as a float: diffusers' FlowMatchEulerDiscreteScheduler feeds
    sigma * num_train_timesteps). A ``shift`` of the training sigmas changes where training
    spent its steps, not the relation between s and the model's timestep, so it is recorded
    but no score formula reads it. The deterministic (Euler ODE) step from s_c to s_n is
    x_n = x_c + (s_n - s_c) v(x_c, s_c): the same affine form c1 x + c2 pred as the DDIM step.
    """

    process = "flow"
    loss_x0_weight = 1.0

    def __init__(self, T: int = 1000, shift: float = 1.0, description: Mapping[str, Any] | None = None):
        self._T = _positive_int(T, "T")
        try:
            shift = float(shift)
        except (TypeError, ValueError):
            raise ConfigError(f"flow schedule: shift = {shift!r} must be a positive number") from None
        if not (math.isfinite(shift) and shift > 0):
            raise ConfigError(f"flow schedule: shift = {shift!r} must be a positive number")
        self.shift = shift
        self._description = dict(description) if description is not None else None

    @property
    def T(self) -> int:
        return self._T

    def __len__(self) -> int:
        return self._T

    def __repr__(self) -> str:
        return f"FlowSchedule(T={self._T}, shift={self.shift:g})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FlowSchedule) and self.T == other.T and self.shift == other.shift

    def __hash__(self) -> int:  # pragma: no cover
        return hash((self._T, self.shift))

    def check_timestep(self, t, name: str = "t"):
        """t as an int or int64 array, or a ConfigError if any value is outside [0, T)."""
        return _checked_timesteps(t, name, self._T, f"the flow schedule's timesteps (s = t / {self._T})")

    def sigma_at(self, t) -> float:
        """s = t / T (float64)."""
        return float(self.check_timestep(int(t))) / self._T

    def step_coefficients(self, t_cur: int, t_next: int) -> tuple[float, float]:
        """(1, s_next - s_cur): the Euler step of the probability-flow ODE."""
        return 1.0, self.sigma_at(t_next) - self.sigma_at(t_cur)

    def noise_coefficients(self, t: int) -> tuple[float, float]:
        """(1 - s, s)."""
        s = self.sigma_at(t)
        return 1.0 - s, s

    def pia_coefficients(self, t: int) -> tuple[float, float]:
        """(1, s): x_s = (1 - s) x0 + s (v0 + x0) = x0 + s v0, where v0 = v(x0, 0) stands for eps - x0."""
        return 1.0, self.sigma_at(t)

    def fingerprint_bytes(self) -> bytes:
        return f"flow|{self._T}|{self.shift!r}".encode()

    def to_dict(self) -> dict:
        return {"kind": "flow", "T": self._T, "shift": self.shift}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "FlowSchedule":
        return cls(spec.get("T", 1000), spec.get("shift", 1.0), spec)


# ---------------------------------------------------------------------- constructors


def linear_schedule(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> Schedule:
    """DDPM's linear betas from beta_1 to beta_T over T steps (SecMI's and pytorch-ddpm's defaults)."""
    T = _positive_int(T, "T")
    beta_1, beta_T = _beta(beta_1, "beta_1"), _beta(beta_T, "beta_T")
    betas = np.linspace(beta_1, beta_T, T, dtype=np.float64)
    return Schedule(betas, {"kind": "linear", "T": T, "beta_1": beta_1, "beta_T": beta_T})


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule: abar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, betas clipped."""
    T = _positive_int(T, "T")
    s = float(s)
    if not (s >= 0 and math.isfinite(s)):
        raise ConfigError(f"cosine schedule: s = {s!r} must be a finite number >= 0")
    steps = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((steps + s) / (1.0 + s) * math.pi / 2.0) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], float(max_beta))
    return Schedule(betas, {"kind": "cosine", "T": T, "s": s, "max_beta": float(max_beta)})


def sigmoid_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """diffusers' "sigmoid" (GeoDiff) betas: sigmoid(linspace(-6, 6, T)) scaled into [beta_start, beta_end]."""
    T = _positive_int(T, "T")
    x = np.linspace(-6.0, 6.0, T, dtype=np.float64)
    betas = 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start
    return Schedule(betas, {"kind": "sigmoid", "T": T, "beta_start": float(beta_start), "beta_end": float(beta_end)})


def scaled_linear_schedule(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Schedule:
    """Latent-diffusion betas: linear in sqrt(beta), squared."""
    T = _positive_int(T, "T")
    beta_start, beta_end = _beta(beta_start, "beta_start"), _beta(beta_end, "beta_end")
    betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    return Schedule(betas, {"kind": "scaled_linear", "T": T, "beta_start": beta_start, "beta_end": beta_end})


def schedule_from_diffusers_config(config: Mapping[str, Any] | str | os.PathLike) -> Schedule:
    """The schedule of a diffusers scheduler config (a dict, a scheduler_config.json, or a folder holding one).

    Reads num_train_timesteps, beta_start, beta_end, beta_schedule (linear, scaled_linear,
    squaredcos_cap_v2, sigmoid), trained_betas and rescale_betas_zero_snr, with diffusers' defaults.
    """
    if not isinstance(config, Mapping):
        config = _read_json_config(config)
    T = config.get("num_train_timesteps", 1000)
    beta_start = config.get("beta_start", 1e-4)
    beta_end = config.get("beta_end", 0.02)
    kind = config.get("beta_schedule", "linear")
    trained = config.get("trained_betas")
    if trained is not None:
        sched = Schedule(trained)
    elif kind == "linear":
        sched = linear_schedule(T, beta_start, beta_end)
    elif kind == "scaled_linear":
        sched = scaled_linear_schedule(T, beta_start, beta_end)
    elif kind == "squaredcos_cap_v2":
        sched = cosine_schedule(T, 0.008, 0.999)
    elif kind == "sigmoid":
        sched = sigmoid_schedule(T, beta_start, beta_end)
    else:
        raise ConfigError(
            f"scheduler config: beta_schedule = {kind!r} is not supported; "
            "use linear, scaled_linear, squaredcos_cap_v2, sigmoid or trained_betas"
        )
    if config.get("rescale_betas_zero_snr", False):
        sched = Schedule(_rescale_zero_terminal_snr(sched.betas))
    return sched


def schedule_from_dict(spec: Mapping[str, Any]) -> Schedule:
    """Build a schedule from Schedule.to_dict() output, a diffusers scheduler config, or {T, beta_1, beta_T}."""
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"schedule: expected a dict describing the schedule, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind is None:
        if "beta_schedule" in spec or "num_train_timesteps" in spec or "trained_betas" in spec:
            return schedule_from_diffusers_config(spec)
        if "betas" in spec:
            kind = "betas"
        else:
            kind = "linear"
    try:
        if kind == "linear":
            return linear_schedule(spec.get("T", 1000), spec.get("beta_1", 1e-4), spec.get("beta_T", 0.02))
        if kind == "cosine":
            return cosine_schedule(spec.get("T", 1000), spec.get("s", 0.008), spec.get("max_beta", 0.999))
        if kind == "scaled_linear":
            return scaled_linear_schedule(spec.get("T", 1000), spec["beta_start"], spec["beta_end"])
        if kind == "sigmoid":
            return sigmoid_schedule(spec.get("T", 1000), spec["beta_start"], spec["beta_end"])
        if kind == "betas":
            return Schedule(spec["betas"])
        if kind == "flow":
            return FlowSchedule.from_dict(spec)
    except KeyError as exc:
        raise ConfigError(f"schedule: a {kind!r} schedule needs the key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"schedule: malformed {kind!r} description: {exc}") from None
    raise ConfigError(f"schedule: kind = {kind!r} is unknown; use linear, cosine, scaled_linear, sigmoid, betas or flow")


# ---------------------------------------------------------------------- helpers


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    # Lin et al. 2023: shift and scale sqrt(abar) so that the last step has zero SNR, as diffusers does.
    sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


def _read_json_config(path) -> dict:
    """A scheduler config read like every other config: regular files only, size-capped, valid JSON, a JSON object."""
    from .models.config_io import check_schedule_steps, read_config_json

    path = Path(path)
    if path.is_dir():
        for candidate in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise ConfigError(f"scheduler config: no scheduler_config.json in folder {path}")
    config = read_config_json(path, "scheduler config")
    if not isinstance(config, dict):
        raise ConfigError(f"scheduler config {path} must hold a JSON object")
    check_schedule_steps(config, f"scheduler config {path}")
    return config


def _positive_int(value, name: str) -> int:
    """A step count: a positive integer (or an integral float) of at most MAX_STEPS."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= MAX_STEPS:
        raise ConfigError(f"schedule: {name} = {value!r} must be a positive integer of at most {MAX_STEPS}")
    return int(value)


def _beta(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"schedule: {name} = {value!r} must be a number in (0, 1)") from None
    if not (0.0 < value < 1.0):
        raise ConfigError(f"schedule: {name} = {value!r} must be a number in (0, 1)")
    return value


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "device")


def _to_numpy(value):
    if _is_tensor(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _checked_timesteps(t, name: str, T: int, what: str):
    """t as an int or int64 array, or a ConfigError naming the first value outside [0, T)."""
    values = _as_int_array(t, name)
    if np.size(values):
        lo, hi = int(np.min(values)), int(np.max(values))
        if lo < 0 or hi >= T:
            culprit = lo if lo < 0 else hi
            raise ConfigError(f"{name} = {culprit} is outside {what} [0, {T}); use a timestep between 0 and {T - 1}")
    return values


def _as_int_array(t, name: str):
    """t as an int (scalar input) or an int64 numpy array; ConfigError for non-integer values."""
    if isinstance(t, bool):
        raise ConfigError(f"{name} = {t!r} must be an integer timestep")
    if isinstance(t, (int, np.integer)):
        return int(t)
    array = _to_numpy(t)
    if array.dtype.kind not in "iu":
        if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise ConfigError(f"{name} must hold integer timesteps, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.ndim == 0 and not _is_tensor(t) and not isinstance(t, np.ndarray):
        return int(array)
    return array


def _like_input(template, values):
    """Return float64 values as a Python float (int input), a tensor on template's device, or a numpy array."""
    if np.ndim(values) == 0 and not _is_tensor(template) and not isinstance(template, np.ndarray):
        return float(values)
    if _is_tensor(template):
        import torch

        return torch.as_tensor(np.asarray(values, dtype=np.float64), device=template.device)
    return np.asarray(values, dtype=np.float64)
