"""Membership-inference metrics in numpy: exact ROC, AUC, TPR at low FPR, balanced accuracy, fixed-decision rates."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError

# The FPR targets every report carries (DESIGN section 2): 1%, 0.1%, 0.01% and 0%.
REPORT_FPRS = (1e-2, 1e-3, 1e-4, 0.0)


def check_labels(labels, n: int | None = None, name: str = "labels") -> np.ndarray:
    """Validate labels: 1-D, 0/1 (or bool), `n` of them when given -> int64."""
    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array, got shape {labels_arr.shape}")
    if n is not None and labels_arr.shape[0] != n:
        raise InputError(f"{name} has {labels_arr.shape[0]} entries but scores have {n}; "
                         "pass one label per score")
    if labels_arr.dtype == bool:
        return labels_arr.astype(np.int64)
    if labels_arr.dtype.kind not in "iuf":
        raise InputError(f"{name} must be numeric 0/1 (1 = member), got dtype {labels_arr.dtype}")
    bad = ~np.isin(labels_arr, (0, 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name} must be 0 (non-member) or 1 (member); "
                         f"found {labels_arr[first].item()!r} at index {first}")
    return labels_arr.astype(np.int64)


def check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: scores -> float64 [N] finite, labels -> int64 [N] in {0, 1}, N >= 1."""
    scores_arr = np.asarray(scores)
    if scores_arr.ndim != 1:
        raise InputError(f"scores must be a 1-D array, got shape {scores_arr.shape}")
    if scores_arr.shape[0] == 0:
        raise InputError("scores is empty; pass at least one score")
    if scores_arr.dtype.kind not in "iuf" and scores_arr.dtype != bool:
        raise InputError(f"scores must be numeric, got dtype {scores_arr.dtype}")
    scores_arr = scores_arr.astype(np.float64)
    bad = ~np.isfinite(scores_arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"scores must be finite; found {scores_arr[first]} at index {first} "
                         f"({int(bad.sum())} non-finite in all)")
    return scores_arr, check_labels(labels, scores_arr.shape[0])


def _safe_ratio(count: np.ndarray, total: int) -> np.ndarray:
    # A rate over an empty class is undefined: NaN, never a made-up 0 or 1.
    if total == 0:
        return np.full(np.shape(count), np.nan)
    return np.asarray(count, dtype=np.float64) / total


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC, higher score = member: one point per distinct score, starting at (0, 0).

    Point i predicts "member" for every score >= thresholds[i]; thresholds[0] is +inf
    (nothing predicted member). Tied scores move together, so a tie between a member
    and a non-member gives one diagonal step. With one class absent its rate is NaN.
    Returns (fpr, tpr, thresholds), each of length (number of distinct scores + 1).
    """
    scores_arr, labels_arr = check_scores_labels(scores, labels)
    order = np.argsort(-scores_arr, kind="mergesort")
    sorted_scores = scores_arr[order]
    sorted_labels = labels_arr[order]
    # The last index of each run of equal scores is where a threshold can sit.
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, sorted_scores.shape[0] - 1)
    true_pos = np.cumsum(sorted_labels)[run_ends]
    false_pos = (run_ends + 1) - true_pos
    n_pos = int(labels_arr.sum())
    n_neg = int(labels_arr.shape[0] - n_pos)
    fpr = _safe_ratio(np.concatenate(([0], false_pos)), n_neg)
    tpr = _safe_ratio(np.concatenate(([0], true_pos)), n_pos)
    thresholds = np.concatenate(([np.inf], sorted_scores[run_ends]))
    return fpr, tpr, thresholds


def auc(scores, labels) -> float:
    """Area under the exact ROC by the trapezoid rule (ties count one half); NaN with one class."""
    fpr, tpr, _ = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(scores, labels, fpr: float | Sequence[float]):
    """Largest TPR among ROC points with FPR <= target; a float for a float target, an array for a sequence.

    Never interpolates: at 0% FPR it is the share of members scored above every
    non-member. NaN where a class is absent.
    """
    targets = np.asarray(fpr, dtype=np.float64)
    if targets.ndim > 1 or np.isnan(targets).any() or (targets < 0).any() or (targets > 1).any():
        raise InputError(f"fpr must be a number or a 1-D sequence of numbers in [0, 1], got {fpr!r}")
    roc_fpr, roc_tpr, _ = roc_curve(scores, labels)
    if np.isnan(roc_fpr).any() or np.isnan(roc_tpr).any():
        result = np.full(targets.shape, np.nan)
    else:
        # FPR and TPR are both non-decreasing along the curve, so the last admissible point wins.
        last = np.searchsorted(roc_fpr, targets, side="right") - 1
        result = roc_tpr[last]
    return float(result) if targets.ndim == 0 else result


def balanced_accuracy(scores, labels) -> float:
    """Best balanced accuracy over thresholds, max of (TPR + 1 - FPR) / 2; at least 0.5, NaN with one class."""
    fpr, tpr, _ = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def decision_rates(decision, labels) -> dict[str, float]:
    """Observed FPR and TPR of a fixed member/non-member decision (NaN for an absent class)."""
    decision_arr = np.asarray(decision)
    if decision_arr.ndim != 1:
        raise InputError(f"decision must be a 1-D array, got shape {decision_arr.shape}")
    if decision_arr.dtype != bool:
        decision_arr = check_labels(decision_arr, None, name="decision").astype(bool)
    labels_arr = check_labels(labels, decision_arr.shape[0])
    members = labels_arr == 1
    n_pos = int(members.sum())
    n_neg = int(members.shape[0] - n_pos)
    return {
        "fpr": float(_safe_ratio(np.count_nonzero(decision_arr & ~members), n_neg)),
        "tpr": float(_safe_ratio(np.count_nonzero(decision_arr & members), n_pos)),
    }


def fpr_key(target: float) -> str:
    """The report key of an FPR target: '1%', '0.1%', '0.01%', '0%'."""
    return f"{target * 100:g}%"


def summarize(scores, labels, decision=None, fprs: Sequence[float] = REPORT_FPRS) -> dict:
    """All report metrics of one method: AUC, TPR at each FPR target, balanced accuracy, decision rates."""
    scores_arr, labels_arr = check_scores_labels(scores, labels)
    tprs = tpr_at_fpr(scores_arr, labels_arr, list(fprs))
    summary = {
        "auc": auc(scores_arr, labels_arr),
        "tpr_at_fpr": {fpr_key(t): float(v) for t, v in zip(fprs, tprs)},
        "balanced_accuracy": balanced_accuracy(scores_arr, labels_arr),
        "n_members": int(labels_arr.sum()),
        "n_nonmembers": int(labels_arr.shape[0] - labels_arr.sum()),
    }
    if decision is not None:
        summary["decision"] = decision_rates(decision, labels_arr)
    return summary
