"""Split-conformal calibration of the decision "member iff log s(x) < q(x)": the calibration part, its rank and shift."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

CALIBRATION_METHODS = ("conformal", "none")
# Share of the public set held out for calibration when alpha itself asks for fewer images.
DEFAULT_CALIBRATION_FRACTION = 0.2
# Never more than this share: the regressors need the rest.
MAX_CALIBRATION_FRACTION = 0.5


def _exact(level: float) -> Fraction:
    # The decimal the user wrote (0.29, not 0.28999999999999998): floor(level * (n + 1)) must not lose
    # a rank to binary rounding, nor gain one.
    return Fraction(repr(float(level)))


def conformal_rank(n_calibration: int, level: float) -> int:
    """k = floor(level * (n + 1)): the rank of the calibration residual that the shift takes (0: none is small enough).

    With residuals r_i = y_i - q(x_i) of n calibration non-members and a new non-member's
    r exchangeable with them, P(r < r_(k)) <= k / (n + 1) <= level: r < r_(k) only if r
    is among the k smallest of the n + 1 values, and each position is equally likely
    (ties can only make the strict inequality rarer). For continuous residuals it is
    exactly k / (n + 1), which lies in (level - 1/(n + 1), level].
    """
    if n_calibration < 0:
        raise ValueError("n_calibration must be >= 0")
    return math.floor(_exact(level) * (n_calibration + 1))


def min_calibration_size(level: float) -> int:
    """The fewest calibration residuals that allow a shift at `level`: n with floor(level (n + 1)) >= 1."""
    return math.ceil(1 / _exact(level)) - 1


def calibration_size(n_public: int, alpha: float, fraction: float = DEFAULT_CALIBRATION_FRACTION) -> int:
    """How many public images to hold out: `fraction` of them, at least enough for one rank at alpha, at most half.

    0 means the public set is too small to calibrate at alpha (the caller must say so).
    """
    wanted = max(math.ceil(fraction * n_public), min_calibration_size(alpha))
    size = min(wanted, int(MAX_CALIBRATION_FRACTION * n_public))
    return size if conformal_rank(size, alpha) >= 1 else 0


def split_public(n_public: int, n_calibration: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, calibration indices), disjoint and sorted, drawn by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n_public)
    return np.sort(order[n_calibration:]), np.sort(order[:n_calibration])


@dataclass
class ConformalShift:
    """The calibrated shift at one level: member iff log s(x) - q(x) < shift, i.e. log s(x) < q(x) + shift."""

    level: float
    n_calibration: int
    rank: int                 # k = floor(level (n + 1)); the shift is the k-th smallest residual
    shift: float              # log-score units, added to every regressor's threshold at this level
    bound: float              # k / (n + 1): the guaranteed bound on a non-member's chance of a member call

    def to_dict(self) -> dict:
        return {"level": self.level, "n_calibration": self.n_calibration, "rank": self.rank, "shift": self.shift,
                "fpr_bound": self.bound}


def conformal_shift(residuals: np.ndarray, level: float) -> ConformalShift | None:
    """The shift that makes "residual < shift" a level-alpha test for exchangeable residuals; None if n is too small."""
    values = np.sort(np.asarray(residuals, dtype=np.float64).reshape(-1))
    n = int(values.size)
    rank = conformal_rank(n, level)
    if rank < 1:
        return None
    return ConformalShift(level=float(level), n_calibration=n, rank=rank, shift=float(values[rank - 1]),
                          bound=rank / (n + 1))


def too_small_message(n_public: int, alpha: float) -> str:
    """Why a public set cannot be calibrated at alpha, and what to do instead."""
    needed = min_calibration_size(alpha)
    return (f"the public set has {n_public} images; conformal calibration at alpha = {alpha:g} needs at least "
            f"{needed} calibration images (floor(alpha (n + 1)) >= 1) and may hold out at most half of the public "
            f"set, i.e. a public set of at least {2 * needed} images; the decision is the uncalibrated rule "
            f"(FPR only about alpha). Use a larger public set or alpha, or pass --calibration none to silence this")
