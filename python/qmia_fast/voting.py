"""The bag's vote: majority decisions and mean margins (the vote kernel), the vote's one equivalent threshold, p-values."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .arrays import to_tensor
from .errors import InputError


def majority_vote(log_score: np.ndarray, thresholds: np.ndarray, with_margin: bool = False) -> tuple[np.ndarray, ...]:
    """The vote kernel: (votes int32 [N], decision bool [N]) for log-scores [N] against thresholds [B, N], and
    with `with_margin` also the bag's mean margin q_alpha(x) - log s(x) [N], its membership score.

    float32 inputs take the kernel's float32 path (a float32 margin, summed in float64);
    anything else runs in float64 and the margin stays float64, since rounding it to
    float32 would merge distinct scores into ties and so move the exact ROC.
    """
    from .kernels import vote

    single = np.asarray(log_score).dtype == np.float32 and np.asarray(thresholds).dtype == np.float32
    dtype = np.float32 if single else np.float64
    votes, decision, margin = vote(to_tensor(log_score, dtype), to_tensor(thresholds, dtype))
    result = (np.asarray(votes.numpy(), dtype=np.int32), np.asarray(decision.numpy(), dtype=bool))
    return (*result, margin.numpy()) if with_margin else result


def mean_margin(log_score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The bag's mean of q_alpha(x) - log s(x): the vote kernel's margin (float64 unless both inputs are float32)."""
    return majority_vote(log_score, thresholds, with_margin=True)[2]


def pvalue_score(log_score: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Minus the bag's mean estimated CDF of log s(x): the p-value read off the predicted quantiles.

    quantiles [B, N, K] at increasing `levels`; each regressor's CDF is the piecewise-linear
    curve through (q_k, level_k), extended linearly past the end levels so that scores
    beyond the outermost quantile stay ordered. Higher = member.
    """
    levels_arr = np.asarray(levels, dtype=np.float64)
    q = np.sort(quantiles, axis=2)  # non-monotone heads may cross; a CDF cannot
    n_levels = q.shape[2]
    y = log_score[None, :, None]
    segment = np.clip((q < y).sum(axis=2), 1, n_levels - 1)  # upper knot of the segment holding y
    upper = np.take_along_axis(q, segment[..., None], axis=2)[..., 0]
    lower = np.take_along_axis(q, segment[..., None] - 1, axis=2)[..., 0]
    level_hi, level_lo = levels_arr[segment], levels_arr[segment - 1]
    width = np.maximum(upper - lower, 1e-12)
    cdf = level_lo + (log_score[None, :] - lower) * (level_hi - level_lo) / width
    return -cdf.mean(axis=0)


def vote_threshold(thresholds) -> np.ndarray:
    """The bag's effective per-image threshold [N] from its B thresholds [B, N].

    Majority vote calls x a member iff more than B/2 regressors have log s(x) < q_j(x), i.e. iff
    log s(x) is below the (floor(B/2) + 1)-th largest q_j(x): that order statistic is the one
    threshold equivalent to the vote (the median for odd B), ties included.
    """
    values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise InputError(f"thresholds must be [B, N] with B >= 1, got shape {values.shape}")
    n_models = values.shape[0]
    return np.sort(values, axis=0)[n_models - (n_models // 2 + 1)]
