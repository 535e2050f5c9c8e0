"""Summaries across bag seeds (mean +- sd) and binomial confidence intervals for observed rates."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..metrics import clopper_pearson

CONFIDENCE = 0.95


def mean_sd(values: Iterable[float]) -> dict[str, float]:
    """{"mean", "sd", "n"} over finite values; sd is the sample sd (ddof 1), NaN with fewer than two.

    Equal values have sd exactly 0 (a deterministic method), not the rounding residue of their mean.
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    if arr.size == 1:
        return {"mean": float(arr[0]), "sd": float("nan"), "n": 1}
    if arr.min() == arr.max():
        return {"mean": float(arr[0]), "sd": 0.0, "n": int(arr.size)}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)), "n": int(arr.size)}


def rate_interval(counts: Sequence[int], n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval at the seeds' mean count out of n: the sampling uncertainty of one run at that rate.

    The seeds share their evaluation images, so their counts are not independent draws and
    are not pooled; the spread over seeds (training noise) is reported separately as the sd.
    """
    if not len(counts) or n < 1:
        return float("nan"), float("nan")
    return clopper_pearson(int(round(float(np.mean(counts)))), n, confidence)
