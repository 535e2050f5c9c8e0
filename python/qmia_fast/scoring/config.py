"""ScoreConfig: everything that decides a score's value (method, its settings, seed, precision); the package's score defaults live here only."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import ConfigError
from .methods import REGISTRY

METHODS = tuple(REGISTRY)
# The settings that define a score's value, besides seed and precision.
SCORE_SETTINGS = ("method", "t_sec", "k", "t", "p", "n_draws")
# Which settings each method reads; the others do not apply to it.
METHOD_SETTINGS = {name: method.settings for name, method in REGISTRY.items()}


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides a score's value; its defaults are the package's score defaults."""

    method: str = "secmi"
    t_sec: int = 100
    k: int = 10
    t: int = 200
    p: float = 4.0
    n_draws: int = 1
    seed: int = 0
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def applicable(self) -> dict[str, Any]:
        """The method, the settings it reads, seed and precision (what a report should list)."""
        names = ("method", *METHOD_SETTINGS.get(self.method, ()), "seed", "precision")
        return {name: getattr(self, name) for name in names}

    @property
    def score_method(self):
        return REGISTRY[self.method]

    @property
    def unet_calls(self) -> int:
        """UNet evaluations per image."""
        return self.score_method.unet_calls(self)

    def check(self, T: int) -> None:
        """Every check that can fail on options alone, before any image is touched."""
        if self.method not in REGISTRY:
            raise ConfigError(f"method = {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        self.score_method.check(self, T)
        if self.precision.startswith("mixed") and self.method != "secmi":
            raise ConfigError(f"precision {self.precision!r} (bf16 inversion, full-precision round trip) applies to "
                              f"the secmi method only; use fp16, bf16, tf32 or fp32 for {self.method}")


def score_defaults() -> dict[str, Any]:
    """The default of every score setting (SCORE_SETTINGS), read off ScoreConfig."""
    return {f.name: f.default for f in fields(ScoreConfig) if f.name in SCORE_SETTINGS}


def settings_text(cfg: ScoreConfig) -> str:
    return ", ".join(f"{name}={value}" for name, value in cfg.applicable().items())


def as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} = {value!r} must be an integer")
    return int(value)


def as_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} = {value!r} must be a number")
    return float(value)


def positive_or_none(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConfigError(f"{name} = {value!r} must be a positive integer (or omitted for the default)")
    return int(value)
