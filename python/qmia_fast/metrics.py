"""Membership-inference metrics in numpy: exact ROC, AUC, TPR at low FPR with counts and Clopper-Pearson intervals,
balanced accuracy, fixed-decision rates, and when a holdout is too small to resolve them."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError

# The FPR targets every report carries (the field's convention): 1%, 0.1%, 0.01% and 0%.
REPORT_FPRS = (1e-2, 1e-3, 1e-4, 0.0)
# Two-sided coverage of every interval in a report.
CONFIDENCE = 0.95
# A decision at level alpha is resolved by a holdout on which at least this many false positives are
# expected (n_nonmembers * alpha >= 10, i.e. at least 10 / alpha non-members): with fewer, the observed
# FPR's relative standard error exceeds 1/sqrt(10), about a third of alpha, and grows quickly.
MIN_EXPECTED_FALSE_POSITIVES = 10


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


def require_both_classes(labels_arr: np.ndarray, name: str = "labels") -> tuple[int, int]:
    """(members, non-members) of validated labels; InputError unless both are present (a rate needs both)."""
    n_pos = int(np.count_nonzero(labels_arr))
    n_neg = int(labels_arr.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        kind = "non-members (0)" if n_pos == 0 else "members (1)"
        raise InputError(f"{name}: all {labels_arr.shape[0]} samples are {kind}; membership metrics need at "
                         "least one member (1) and one non-member (0): pass labels of both kinds")
    return n_pos, n_neg


def roc_counts(scores, labels):
    """Exact ROC as counts: (false positives, true positives, thresholds, members, non-members)."""
    scores_arr, labels_arr = check_scores_labels(scores, labels)
    n_pos, n_neg = require_both_classes(labels_arr)
    order = np.argsort(-scores_arr, kind="mergesort")
    sorted_scores = scores_arr[order]
    sorted_labels = labels_arr[order]
    # The last index of each run of equal scores is where a threshold can sit.
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, sorted_scores.shape[0] - 1)
    true_pos = np.cumsum(sorted_labels)[run_ends]
    false_pos = (run_ends + 1) - true_pos
    thresholds = np.concatenate(([np.inf], sorted_scores[run_ends]))
    return (np.concatenate(([0], false_pos)).astype(np.int64), np.concatenate(([0], true_pos)).astype(np.int64),
            thresholds, n_pos, n_neg)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC, higher score = member: one point per distinct score, starting at (0, 0).

    Point i predicts "member" for every score >= thresholds[i]; thresholds[0] is +inf
    (nothing predicted member). Tied scores move together, so a tie between a member
    and a non-member gives one diagonal step. Labels of one class only are an InputError.
    Returns (fpr, tpr, thresholds), each of length (number of distinct scores + 1).
    """
    false_pos, true_pos, thresholds, n_pos, n_neg = roc_counts(scores, labels)
    return false_pos / n_neg, true_pos / n_pos, thresholds


def auc(scores, labels) -> float:
    """Area under the exact ROC by the trapezoid rule (ties count one half); InputError with one class."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _check_targets(fpr) -> np.ndarray:
    targets = np.asarray(fpr, dtype=np.float64)
    if targets.ndim > 1 or np.isnan(targets).any() or (targets < 0).any() or (targets > 1).any():
        raise InputError(f"fpr must be a number or a 1-D sequence of numbers in [0, 1], got {fpr!r}")
    return targets


def _last_point_within(roc_fpr: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # FPR and TPR are both non-decreasing along the curve, so the last admissible point has the largest TPR.
    return np.searchsorted(roc_fpr, targets, side="right") - 1


def tpr_at_fpr(scores, labels, fpr: float | Sequence[float]):
    """Largest TPR among ROC points with FPR <= target; a float for a float target, an array for a sequence.

    Never interpolates: at 0% FPR it is the share of members scored above every
    non-member. This is the value on the sample, whatever its size; operating_points()
    says which targets the sample can resolve.
    """
    targets = _check_targets(fpr)
    roc_fpr, roc_tpr, _ = roc_curve(scores, labels)
    result = roc_tpr[_last_point_within(roc_fpr, targets)]
    return float(result) if targets.ndim == 0 else result


def balanced_accuracy(scores, labels) -> float:
    """Best-threshold balanced accuracy, max over thresholds of (TPR + 1 - FPR) / 2; at least 0.5."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def decision_rates(decision, labels) -> dict[str, float]:
    """Observed FPR and TPR of a fixed member/non-member decision; InputError with one class."""
    counts = decision_counts(decision, labels)
    return {"fpr": counts["fp"] / counts["n_nonmembers"], "tpr": counts["tp"] / counts["n_members"]}


def decision_counts(decision, labels) -> dict[str, int]:
    """False and true positives of a fixed decision, with the class sizes they are out of."""
    decision_arr = np.asarray(decision)
    if decision_arr.ndim != 1:
        raise InputError(f"decision must be a 1-D array, got shape {decision_arr.shape}")
    if decision_arr.dtype != bool:
        decision_arr = check_labels(decision_arr, None, name="decision").astype(bool)
    labels_arr = check_labels(labels, decision_arr.shape[0])
    n_pos, n_neg = require_both_classes(labels_arr)
    members = labels_arr == 1
    return {"fp": int(np.count_nonzero(decision_arr & ~members)), "n_nonmembers": n_neg,
            "tp": int(np.count_nonzero(decision_arr & members)), "n_members": n_pos}


# --- uncertainty of rates measured on a finite holdout ----------------------------------------

def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (the Beta(a, b) CDF at x), for a, b > 0.

    Lentz's continued fraction, evaluated on the side of the mean where it converges fast
    (I_x(a, b) = 1 - I_{1-x}(b, a) on the other).
    """
    if not (a > 0 and b > 0):
        raise InputError(f"regularized_beta needs a > 0 and b > 0, got a = {a}, b = {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return _regularized_beta(x, 1.0 - x, math.log(x), math.log1p(-x), a, b)


def _regularized_beta(x: float, y: float, log_x: float, log_y: float, a: float, b: float) -> float:
    # y = 1 - x and both logarithms travel with x: with b in the millions, b * log(1 - x) must come from
    # log1p(-x), not from the rounded 1 - x, and the swap below must not recompute them.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_beta(y, x, log_y, log_x, b, a)
    log_front = a * log_x + b * log_y - log_beta(a, b)
    return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a


# Stirling series of lgamma(x) - ((x - 0.5) log x - x + log(2 pi) / 2): coefficients of x^-1, x^-3, ...
_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _lgamma_correction(x: float) -> float:
    # For x >= 10 the series is exact to double precision with these seven terms.
    inverse_square = 1.0 / (x * x)
    total, power = 0.0, 1.0 / x
    for coefficient in _STIRLING:
        total += coefficient * power
        power *= inverse_square
    return total


def log_beta(a: float, b: float) -> float:
    """log B(a, b), accurate also when one argument is huge (lgamma(a + b) - lgamma(b) would cancel)."""
    small, large = min(a, b), max(a, b)
    if large < 10:
        return math.lgamma(small) + math.lgamma(large) - math.lgamma(small + large)
    ratio = small / (small + large)
    if small >= 10:
        correction = _lgamma_correction(small) + _lgamma_correction(large) - _lgamma_correction(small + large)
        return (-0.5 * math.log(large) + _HALF_LOG_2PI + correction + (small - 0.5) * math.log(ratio)
                + large * math.log1p(-ratio))
    correction = _lgamma_correction(large) - _lgamma_correction(small + large)
    return math.lgamma(small) + correction + small - small * math.log(small + large) \
        + (large - 0.5) * math.log1p(-ratio)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    # Converges in O(sqrt(max(a, b))) terms on this side of the mean; the cap is far beyond any holdout.
    for m in range(1, 100_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return value


def beta_quantile(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): x with I_x(a, b) = q, by bisection (the CDF is increasing)."""
    if not 0.0 <= q <= 1.0:
        raise InputError(f"beta_quantile needs q in [0, 1], got {q}")
    low, high = 0.0, 1.0
    if q in (0.0, 1.0):
        return q
    # Bisection in the middle of the interval until it cannot shrink: about 60 steps away from 0, and
    # the quantile keeps its relative precision near 0 because the midpoints then halve towards it.
    for _ in range(2000):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if regularized_beta(middle, a, b) < q:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial rate after k successes in n trials.

    low = Beta(k, n - k + 1) quantile at (1 - confidence) / 2 (0 when k = 0);
    high = Beta(k + 1, n - k) quantile at (1 + confidence) / 2 (1 when k = n).
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or not 0 <= k <= n or n < 1:
        raise InputError(f"clopper_pearson needs integers 0 <= k <= n with n >= 1, got k = {k}, n = {n}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be strictly between 0 and 1, got {confidence}")
    k, n = int(k), int(n)
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else beta_quantile(tail, k, n - k + 1)
    high = 1.0 if k == n else beta_quantile(1.0 - tail, k + 1, n - k)
    return low, high


def resolvable(target_fpr: float, n_nonmembers: int) -> bool:
    """Whether a holdout of n non-members can measure an FPR as small as target: target >= 1 / n.

    Below one false positive's worth there is no ROC point between 0 and 1 / n, so "TPR at
    FPR <= target" is the TPR at zero false positives whatever the target; in particular a
    0% target is never resolvable by a finite holdout.
    """
    return n_nonmembers > 0 and target_fpr * n_nonmembers >= 1.0 - 1e-9


def alpha_resolution(alpha: float, n_nonmembers: int) -> str | None:
    """None when the holdout resolves the level alpha, else one line saying why not and what to do.

    The rule: at least MIN_EXPECTED_FALSE_POSITIVES false positives expected at alpha, i.e.
    n_nonmembers >= MIN_EXPECTED_FALSE_POSITIVES / alpha.
    """
    expected = alpha * n_nonmembers
    if expected >= MIN_EXPECTED_FALSE_POSITIVES - 1e-9:
        return None
    needed = math.ceil(MIN_EXPECTED_FALSE_POSITIVES / alpha - 1e-9)
    return (f"the holdout cannot resolve alpha = {fpr_key(alpha)}: its {n_nonmembers} non-members give "
            f"{expected:.3g} expected false positive{'' if expected == 1 else 's'} at that level, fewer than {MIN_EXPECTED_FALSE_POSITIVES}, "
            f"so the observed FPR says little about whether the decision keeps to alpha (see its 95% interval); "
            f"use at least {needed} holdout non-members or a larger alpha")


def operating_points(scores, labels, fprs: Sequence[float] = REPORT_FPRS,
                     confidence: float = CONFIDENCE) -> dict[str, dict]:
    """For each FPR target, the ROC point with the largest TPR among those with FPR <= target.

    key (fpr_key) -> {target_fpr, resolvable, tpr, fpr (observed), tp, fp, threshold,
    tpr_ci (Clopper-Pearson on tp of the members)}. A target below 1 / (non-members) cannot
    be resolved by this sample: its tpr, counts, threshold and interval are None.
    """
    targets = np.atleast_1d(_check_targets(list(fprs)))
    false_pos, true_pos, thresholds, n_pos, n_neg = roc_counts(scores, labels)
    points = _last_point_within(false_pos / n_neg, targets)
    out = {}
    for target, point in zip(targets, points):
        target = float(target)
        entry = {"target_fpr": target, "resolvable": resolvable(target, n_neg)}
        if entry["resolvable"]:
            tp, fp = int(true_pos[point]), int(false_pos[point])
            entry.update(tpr=tp / n_pos, fpr=fp / n_neg, tp=tp, fp=fp, threshold=float(thresholds[point]),
                         tpr_ci=list(clopper_pearson(tp, n_pos, confidence)))
        else:
            entry.update(tpr=None, fpr=None, tp=None, fp=None, threshold=None, tpr_ci=None)
        out[fpr_key(target)] = entry
    return out


def decision_summary(decision, labels, alpha: float | None = None, kind: str = "calibrated",
                     confidence: float = CONFIDENCE) -> dict:
    """A fixed decision's observed rates on labelled samples, with counts and Clopper-Pearson intervals.

    kind: "calibrated" (set without the evaluation labels, e.g. the attack's decision at alpha)
    or "oracle" (a threshold chosen on the evaluated non-members themselves). With alpha, also
    whether the holdout resolves it (alpha_resolution) and, when not, why.
    """
    counts = decision_counts(decision, labels)
    summary = {"kind": kind, "alpha": alpha,
               "fpr": counts["fp"] / counts["n_nonmembers"], "tpr": counts["tp"] / counts["n_members"],
               **counts,
               "fpr_ci": list(clopper_pearson(counts["fp"], counts["n_nonmembers"], confidence)),
               "tpr_ci": list(clopper_pearson(counts["tp"], counts["n_members"], confidence))}
    if alpha is not None:
        problem = alpha_resolution(alpha, counts["n_nonmembers"])
        summary["alpha_resolved"] = problem is None
        summary["warning"] = problem
    return summary


def oracle_decision(scores, labels, alpha: float) -> np.ndarray:
    """The decision at the ROC point for FPR <= alpha: a threshold chosen on these very non-members.

    Optimistic by construction (an attacker does not know the holdout's labels); it is what a
    bare score can be compared with when no calibrated decision exists.
    """
    scores_arr, labels_arr = check_scores_labels(scores, labels)
    point = operating_points(scores_arr, labels_arr, [alpha])[fpr_key(alpha)]
    if point["threshold"] is None:
        raise InputError(f"alpha = {alpha} is below 1 / (number of non-members) = "
                         f"1/{int(labels_arr.shape[0] - labels_arr.sum())}; no threshold on these non-members "
                         "can resolve it: pass a larger alpha or more non-members")
    return scores_arr >= point["threshold"]


def fpr_key(target: float) -> str:
    """The report key of an FPR target: '1%', '0.1%', '0.01%', '0%'."""
    return f"{target * 100:g}%"


def summarize(scores, labels, decision=None, fprs: Sequence[float] = REPORT_FPRS, *, alpha: float | None = None,
              decision_kind: str = "calibrated", confidence: float = CONFIDENCE) -> dict:
    """All report metrics of one method: AUC, TPR at each FPR target (None where the sample cannot resolve it)
    with counts and intervals, balanced accuracy, and the fixed decision's rates with theirs."""
    scores_arr, labels_arr = check_scores_labels(scores, labels)
    n_pos, n_neg = require_both_classes(labels_arr)
    points = operating_points(scores_arr, labels_arr, fprs, confidence)
    summary = {
        "auc": auc(scores_arr, labels_arr),
        "tpr_at_fpr": {key: point["tpr"] for key, point in points.items()},
        "operating_points": points,
        "balanced_accuracy": balanced_accuracy(scores_arr, labels_arr),
        "n_members": n_pos,
        "n_nonmembers": n_neg,
    }
    if decision is not None:
        summary["decision"] = decision_summary(decision, labels_arr, alpha, decision_kind, confidence)
    return summary
