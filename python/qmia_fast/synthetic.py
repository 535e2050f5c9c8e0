"""A synthetic heteroscedastic membership problem with known per-image quantiles, for tests, benchmarks and the oracle experiment."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SyntheticProblem:
    """Images whose non-member log-score spread grows with brightness, and members shifted down."""

    images: np.ndarray      # uint8 N x 1 x S x S
    scores: np.ndarray      # float64 [N], raw (positive, lower = member)
    labels: np.ndarray      # int64 [N], 1 = member
    brightness: np.ndarray  # float64 [N] in [0, 1]
    meta: dict = field(default_factory=dict)


def synthetic_problem(n_nonmembers: int, n_members: int = 0, image_size: int = 8, seed: int = 0,
                      member_shift: float = 0.3, base_spread: float = 0.1, spread_slope: float = 1.0
                      ) -> SyntheticProblem:
    """A heteroscedastic test problem where per-image thresholds must beat one global threshold.

    Image brightness b ~ U(0, 1); pixels = b plus noise. Non-member log-score =
    (base_spread + spread_slope * b) * z with z ~ N(0, 1); members subtract member_shift.
    On dark images a small shift is far outside the narrow non-member spread; a global
    threshold is set by the bright, wide images and misses them.
    """
    rng = np.random.default_rng(seed)
    n = n_nonmembers + n_members
    brightness = rng.uniform(0.0, 1.0, n)
    pixels = brightness[:, None, None, None] + 0.1 * rng.standard_normal((n, 1, image_size, image_size))
    images = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    labels = np.concatenate([np.zeros(n_nonmembers, np.int64), np.ones(n_members, np.int64)])
    log_score = (base_spread + spread_slope * brightness) * rng.standard_normal(n) - member_shift * labels
    meta = dict(image_size=image_size, seed=seed, member_shift=member_shift, base_spread=base_spread,
                spread_slope=spread_slope)
    return SyntheticProblem(images, np.exp(log_score), labels, brightness, meta)
