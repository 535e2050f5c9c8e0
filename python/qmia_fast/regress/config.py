"""Settings shared by every regressor of a bag (architecture, training, device, threads) and the quantile levels."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ..runtime import resolve_device


HEAD_KINDS = ("quantile", "levels", "gaussian")
ENSEMBLE_KINDS = ("bootstrap", "full")


@dataclass
class RegressorConfig:
    """Architecture and training settings of every regressor in a bag (defaults measured in bench/bench_attack.py)."""

    width: int = 16            # channels of the first stage; each further stage doubles them
    depth: int = 2             # stages of one residual block; each stage after the first halves the resolution
    stem_stride: int | None = None  # patch size of the stem; None: the power of two that leaves >= 7 x 7
    head_width: int = 64       # hidden units of the MLP head
    epochs: int = 12           # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    lr: float = 3e-3           # AdamW peak learning rate, cosine-decayed to zero over `epochs`
    weight_decay: float = 1e-4
    holdout_frac: float = 0.1  # share of the public set used for early stopping
    patience: int = 4          # epochs without a better validation loss before a model stops
    monotone: bool = True      # several levels: predict increments so quantiles never cross
    # quantile: pinball loss at the attack's levels; levels: pinball at alpha and a few levels above it
    # (ATTACK_EXTRA_LEVELS), sharing one monotone head; gaussian: (mu, log sigma) by likelihood.
    head: str = "quantile"
    # bootstrap: the paper's bag, each member on a bootstrap resample (early stopping on out-of-bag
    # images); full: each member on the whole training set but its own disjoint early-stopping fold.
    ensemble: str = "bootstrap"
    device: str = "cpu"
    batched: bool | None = None  # None: one grouped network for the bag where measured faster
    # torch intra-op threads for training and prediction on CPU (None: torch's own setting).
    # On a machine shared with other jobs, spinning threads can be many times slower than
    # one (README, "Speed"), so pass threads=1 (or set OMP_NUM_THREADS=1) there.
    threads: int | None = None

    @property
    def network_head(self) -> str:
        return "gaussian" if self.head == "gaussian" else "quantile"

    def validate(self) -> "RegressorConfig":
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        if self.ensemble not in ENSEMBLE_KINDS:
            raise ConfigError(f"ensemble must be one of {', '.join(ENSEMBLE_KINDS)}, got {self.ensemble!r}")
        if self.stem_stride is not None and (not isinstance(self.stem_stride, (int, np.integer))
                                             or isinstance(self.stem_stride, bool) or self.stem_stride < 1):
            raise ConfigError(f"stem_stride must be None (automatic) or a positive integer, got {self.stem_stride!r}")
        if self.threads is not None and (not isinstance(self.threads, (int, np.integer))
                                         or isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be None (torch's setting) or a positive integer, got {self.threads!r}")
        for name in ("width", "depth", "head_width", "epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.depth > 6:
            raise ConfigError(f"depth must be at most 6 (each stage after the first halves the image), "
                              f"got {self.depth}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not (0.0 < self.holdout_frac < 0.5):
            raise ConfigError(f"holdout_frac must be in (0, 0.5), got {self.holdout_frac!r}")
        resolve_device(self.device, default="cpu")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def check_levels(levels: Sequence[float]) -> list[float]:
    """Quantile levels: a non-empty, strictly increasing list of numbers in (0, 1)."""
    try:
        values = [float(v) for v in levels]
    except (TypeError, ValueError):
        raise ConfigError(f"levels must be a sequence of numbers in (0, 1), got {levels!r}") from None
    if not values or any(not (0.0 < v < 1.0) for v in values):
        raise ConfigError(f"levels must be numbers strictly between 0 and 1, got {levels!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"levels must be strictly increasing, got {levels!r}")
    return values
