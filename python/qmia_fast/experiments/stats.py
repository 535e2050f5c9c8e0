"""Summaries across bag seeds (mean +- sd) and binomial confidence intervals for observed rates."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

CONFIDENCE = 0.95


def mean_sd(values: Iterable[float]) -> dict[str, float]:
    """{"mean", "sd", "n"} over finite values; sd is the sample sd (ddof 1), NaN with fewer than two."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
            "n": int(arr.size)}


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial proportion k / n.

    Uses qmia_fast.metrics.clopper_pearson where the installed metrics module has it, else
    the same interval by bisection on the binomial CDF (no scipy needed).
    """
    from .. import metrics

    shared = getattr(metrics, "clopper_pearson", None)
    if shared is not None:
        low, high = shared(int(k), int(n), confidence)
        return float(low), float(high)
    return _clopper_pearson(int(k), int(n), confidence)


def _clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    if n < 1 or not 0 <= k <= n:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    # P(X >= k) grows with p; P(X <= k) falls with p: bisection on each.
    low = 0.0 if k == 0 else _bisect(lambda p: 1.0 - _binom_cdf(k - 1, n, p) - tail, increasing=True)
    high = 1.0 if k == n else _bisect(lambda p: _binom_cdf(k, n, p) - tail, increasing=False)
    return low, high


def _binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    i = np.arange(k + 1, dtype=np.float64)
    lgamma = np.vectorize(math.lgamma)
    log_pmf = (math.lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1)
               + i * math.log(p) + (n - i) * math.log1p(-p))
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def _bisect(f, increasing: bool, iterations: int = 60) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2.0
        if (f(mid) < 0) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def rate_interval(counts: Sequence[int], n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval at the seeds' mean count out of n: the sampling uncertainty of one run at that rate.

    The seeds share their evaluation images, so their counts are not independent draws and
    are not pooled; the spread over seeds (training noise) is reported separately as the sd.
    """
    if not len(counts) or n < 1:
        return float("nan"), float("nan")
    return clopper_pearson(int(round(float(np.mean(counts)))), n, confidence)
