"""Metrics against a deliberately naive reference (threshold by threshold, pair by pair), ties and degenerate cases
included; Clopper-Pearson intervals against closed forms and exact binomial sums; what a small holdout cannot resolve."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from qmia_fast import metrics
from qmia_fast.errors import InputError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402


# --- the naive reference: every candidate threshold evaluated from scratch ---------------------

def naive_points(scores, labels):
    scores = [float(s) for s in scores]
    labels = [int(v) for v in labels]
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    points = []
    for threshold in [math.inf] + sorted(set(scores), reverse=True):
        tp = sum(1 for s, y in zip(scores, labels) if s >= threshold and y == 1)
        fp = sum(1 for s, y in zip(scores, labels) if s >= threshold and y == 0)
        fpr = fp / n_neg if n_neg else math.nan
        tpr = tp / n_pos if n_pos else math.nan
        points.append((fpr, tpr, threshold))
    return points


def naive_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def naive_tpr_at(scores, labels, target):
    points = naive_points(scores, labels)
    if any(math.isnan(f) or math.isnan(t) for f, t, _ in points):
        return math.nan
    return max(t for f, t, _ in points if f <= target)


def naive_balanced(scores, labels):
    points = naive_points(scores, labels)
    if any(math.isnan(f) or math.isnan(t) for f, t, _ in points):
        return math.nan
    return max((t + 1 - f) / 2 for f, t, _ in points)


def assert_close(actual, expected):
    if math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, abs=1e-12)


def check_all(scores, labels):
    if len(set(int(v) for v in labels)) < 2:
        # One class: no rate exists, and every metric says so instead of returning NaN.
        for call in (lambda: metrics.roc_curve(scores, labels), lambda: metrics.auc(scores, labels),
                     lambda: metrics.tpr_at_fpr(scores, labels, 0.01),
                     lambda: metrics.balanced_accuracy(scores, labels)):
            with pytest.raises(InputError, match="at least one member"):
                call()
        return
    fpr, tpr, thr = metrics.roc_curve(scores, labels)
    ref = naive_points(scores, labels)
    assert len(fpr) == len(ref)
    for (rf, rt, rthr), f, t, h in zip(ref, fpr, tpr, thr):
        assert_close(f, rf)
        assert_close(t, rt)
        assert h == rthr
    assert_close(metrics.auc(scores, labels), naive_auc(scores, labels))
    for target in (0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.37, 1.0):
        assert_close(metrics.tpr_at_fpr(scores, labels, target), naive_tpr_at(scores, labels, target))
    assert_close(metrics.balanced_accuracy(scores, labels), naive_balanced(scores, labels))
    check_operating_points(scores, labels)


def check_operating_points(scores, labels):
    labels = [int(v) for v in labels]
    n_pos, n_neg = sum(labels), len(labels) - sum(labels)
    targets = (0.0, 1e-2, 0.1, 0.37, 1.0)
    points = metrics.operating_points(scores, labels, targets)
    for target in targets:
        point = points[metrics.fpr_key(target)]
        assert point["resolvable"] == (target * n_neg >= 1)
        if not point["resolvable"]:
            assert point["tpr"] is None and point["tp"] is None and point["tpr_ci"] is None
            continue
        # Counts at the threshold, recounted by hand.
        called = [float(s) >= point["threshold"] for s in scores]
        assert point["tp"] == sum(c and y == 1 for c, y in zip(called, labels))
        assert point["fp"] == sum(c and y == 0 for c, y in zip(called, labels))
        assert point["tpr"] == point["tp"] / n_pos == pytest.approx(naive_tpr_at(scores, labels, target))
        assert point["fpr"] == point["fp"] / n_neg <= target
        assert point["tpr_ci"] == list(metrics.clopper_pearson(point["tp"], n_pos))


# --- random scores with many ties ------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_random_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 120))
    labels = rng.integers(0, 2, n)
    # Few distinct values force ties within and across classes.
    scores = rng.integers(0, int(rng.integers(1, 8)), n) + 0.5 * labels * rng.integers(0, 2, n)
    check_all(scores, labels)


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 1)), min_size=1, max_size=40))
def test_hypothesis_agrees_with_naive(pairs):
    scores = np.array([p[0] for p in pairs], dtype=float)
    labels = np.array([p[1] for p in pairs])
    check_all(scores, labels)


# --- degenerate cases ------------------------------------------------------------------------

def test_all_scores_equal():
    scores = np.full(10, 0.3)
    labels = np.array([0, 1] * 5)
    check_all(scores, labels)
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    assert metrics.auc(scores, labels) == 0.5
    assert metrics.tpr_at_fpr(scores, labels, 0.01) == 0.0
    assert metrics.balanced_accuracy(scores, labels) == 0.5


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_is_an_input_error_not_nan(label):
    scores = np.array([0.1, 0.5, 0.5, 2.0])
    labels = np.full(4, label)
    check_all(scores, labels)
    kind = "members (1)" if label else "non-members (0)"
    for call in (lambda: metrics.summarize(scores, labels, decision=scores > 0.2),
                 lambda: metrics.decision_rates(scores > 0.2, labels),
                 lambda: metrics.operating_points(scores, labels)):
        with pytest.raises(InputError, match=rf"labels: all 4 samples are {re.escape(kind)}"):
            call()


@pytest.mark.parametrize("member_score, expected_auc", [(1.0, 1.0), (0.0, 0.0), (0.5, 0.5)])
def test_one_sample_per_class(member_score, expected_auc):
    scores = np.array([member_score, 0.5])
    labels = np.array([1, 0])
    check_all(scores, labels)
    assert metrics.auc(scores, labels) == expected_auc


def test_perfect_separation_gives_full_tpr_at_zero_fpr():
    scores = np.array([5.0, 4.0, 3.0, 1.0, 0.0])
    labels = np.array([1, 1, 1, 0, 0])
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 1.0
    np.testing.assert_array_equal(metrics.tpr_at_fpr(scores, labels, [0.0, 0.5]), [1.0, 1.0])


def test_tpr_at_fpr_never_interpolates():
    # 100 non-members, one of them above every member: at 0% FPR no member is caught, at 1% all are.
    scores = np.concatenate([np.arange(100.0), [150.0], np.full(10, 120.0)])
    labels = np.concatenate([np.zeros(101), np.ones(10)])
    scores[99] = -1.0
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 0.0
    assert metrics.tpr_at_fpr(scores, labels, 0.0099) == 0.0
    assert metrics.tpr_at_fpr(scores, labels, 0.01) == 1.0


def test_decision_rates():
    labels = np.array([1, 1, 1, 1, 0, 0])
    decision = np.array([True, True, False, False, True, False])
    assert metrics.decision_rates(decision, labels) == {"fpr": 0.5, "tpr": 0.5}
    assert metrics.decision_rates(decision.astype(int), labels) == {"fpr": 0.5, "tpr": 0.5}
    summary = metrics.decision_summary(decision, labels, alpha=0.5)
    assert (summary["fp"], summary["n_nonmembers"], summary["tp"], summary["n_members"]) == (1, 2, 2, 4)
    assert summary["fpr_ci"] == list(metrics.clopper_pearson(1, 2))
    assert summary["tpr_ci"] == list(metrics.clopper_pearson(2, 4))


def test_summarize_keys():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([1, 0], 100))
    scores = rng.normal(size=200) + labels
    summary = metrics.summarize(scores, labels, decision=scores > 1, alpha=0.05)
    assert list(summary["tpr_at_fpr"]) == ["1%", "0.1%", "0.01%", "0%"]
    assert summary["n_members"] + summary["n_nonmembers"] == 200
    assert 0.5 <= summary["balanced_accuracy"] <= 1
    # 100 non-members: 1% is resolvable, 0.1% and below are not (null, not a number).
    assert summary["tpr_at_fpr"]["1%"] == metrics.tpr_at_fpr(scores, labels, 0.01)
    assert summary["tpr_at_fpr"]["0.1%"] is None and summary["tpr_at_fpr"]["0%"] is None
    decision = summary["decision"]
    assert decision["kind"] == "calibrated" and decision["alpha"] == 0.05
    assert {"fpr", "tpr", "fp", "tp", "fpr_ci", "tpr_ci", "alpha_resolved"} <= set(decision)
    assert decision["fpr"] == decision["fp"] / summary["n_nonmembers"]
    assert decision["alpha_resolved"] is False  # 100 non-members x 5% = 5 expected false positives


@pytest.mark.parametrize("scores, labels, fragment", [
    ([0.1, 0.2], [0, 1, 1], "entries"),
    ([0.1, float("nan")], [0, 1], "finite"),
    ([0.1, float("inf")], [0, 1], "finite"),
    ([0.1, 0.2], [0, 2], r"0 \(non-member\) or 1"),
    ([], [], "empty"),
    ([[0.1, 0.2]], [[0, 1]], "1-D"),
    (["a", "b"], [0, 1], "numeric"),
])
def test_bad_inputs_raise_input_error(scores, labels, fragment):
    with pytest.raises(InputError, match=fragment):
        metrics.roc_curve(scores, labels)


def test_bad_fpr_target():
    with pytest.raises(InputError, match="fpr"):
        metrics.tpr_at_fpr([0.1, 0.2], [0, 1], 1.5)


# --- Clopper-Pearson intervals and the beta quantile behind them -------------------------------

def binomial_tail_at_least(k, n, p):
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def binomial_tail_at_most(k, n, p):
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(0, k + 1))


@pytest.mark.parametrize("n", [1, 2, 7, 30, 60])
def test_clopper_pearson_solves_the_binomial_tail_equations(n):
    # The exact interval's definition: P(X >= k | low) = P(X <= k | high) = 2.5%, by explicit binomial sums.
    for k in range(n + 1):
        low, high = metrics.clopper_pearson(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
        if k == 0:
            assert low == 0.0
        else:
            assert binomial_tail_at_least(k, n, low) == pytest.approx(0.025, rel=1e-9)
        if k == n:
            assert high == 1.0
        else:
            assert binomial_tail_at_most(k, n, high) == pytest.approx(0.025, rel=1e-9)


def test_clopper_pearson_known_values():
    # Closed forms at the edges, and the textbook interval for 5 of 10.
    assert metrics.clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-12)
    assert metrics.clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10), rel=1e-12)
    low, high = metrics.clopper_pearson(5, 10)
    assert low == pytest.approx(0.187086, abs=1e-6) and high == pytest.approx(0.812914, abs=1e-6)
    assert metrics.clopper_pearson(0, 1000)[1] == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-10)
    low99, high99 = metrics.clopper_pearson(5, 10, confidence=0.99)
    assert low99 < low and high99 > high


@pytest.mark.parametrize("k, n", [(14, 1000), (83, 200), (1, 10 ** 6), (3, 10 ** 8), (499, 1000)])
def test_clopper_pearson_against_mpmath(k, n):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    low, high = metrics.clopper_pearson(k, n)
    assert float(mpmath.betainc(k, n - k + 1, 0, low, regularized=True)) == pytest.approx(0.025, rel=1e-8)
    assert float(mpmath.betainc(k + 1, n - k, 0, high, regularized=True)) == pytest.approx(0.975, rel=1e-10)


def test_regularized_beta_closed_forms():
    for x in (1e-9, 0.01, 0.3, 0.5, 0.77, 0.999):
        assert metrics.regularized_beta(x, 1, 7.5) == pytest.approx(1 - (1 - x) ** 7.5, rel=1e-12)
        assert metrics.regularized_beta(x, 3.5, 1) == pytest.approx(x ** 3.5, rel=1e-12)
    for x in (1e-6, 0.003, 0.05, 0.1, 0.2):  # where the CDF is not flat, the quantile inverts it
        assert metrics.beta_quantile(metrics.regularized_beta(x, 2.5, 40), 2.5, 40) == pytest.approx(x, rel=1e-9)
    for a, b in ((0.5, 0.5), (3, 7), (12, 30), (3, 1e8), (2e5, 3e7)):
        expected = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
        assert metrics.log_beta(a, b) == pytest.approx(expected, rel=1e-12, abs=1e-6)
    assert metrics.regularized_beta(0.5, 13, 13) == pytest.approx(0.5, abs=1e-14)
    assert metrics.regularized_beta(0.0, 2, 3) == 0.0 and metrics.regularized_beta(1.0, 2, 3) == 1.0


@pytest.mark.parametrize("k, n", [(-1, 5), (6, 5), (0, 0), (1.5, 5), (True, 5)])
def test_clopper_pearson_bad_counts(k, n):
    with pytest.raises(InputError, match="clopper_pearson"):
        metrics.clopper_pearson(k, n)


# --- what a finite holdout can resolve ------------------------------------------------------------

def test_targets_below_one_false_positive_are_not_resolvable():
    rng = np.random.default_rng(3)
    labels = np.repeat([1, 0], [50, 500])
    scores = rng.normal(size=550) + 2 * labels
    points = metrics.operating_points(scores, labels)
    assert [points[k]["resolvable"] for k in ("1%", "0.1%", "0.01%", "0%")] == [True, False, False, False]
    assert points["1%"]["fp"] <= 5 and points["1%"]["tpr"] == metrics.tpr_at_fpr(scores, labels, 0.01)
    # Exactly one false positive's worth is resolvable.
    assert metrics.resolvable(1 / 500, 500) and not metrics.resolvable(1 / 501, 500)
    assert not metrics.resolvable(0.0, 10 ** 9)


def test_alpha_resolution_rule():
    assert metrics.alpha_resolution(0.01, 1000) is None
    message = metrics.alpha_resolution(0.01, 999)
    assert "1%" in message and "999 non-members" in message and "at least 1000" in message
    assert metrics.alpha_resolution(0.05, 199) is not None and metrics.alpha_resolution(0.05, 200) is None


def test_oracle_decision_is_the_roc_point():
    rng = np.random.default_rng(5)
    labels = np.repeat([1, 0], [100, 400])
    scores = np.round(rng.normal(size=500) + labels, 1)  # ties
    decision = metrics.oracle_decision(scores, labels, 0.05)
    rates = metrics.decision_rates(decision, labels)
    assert rates["fpr"] <= 0.05
    assert rates["tpr"] == metrics.tpr_at_fpr(scores, labels, 0.05)
    with pytest.raises(InputError, match="1/400"):
        metrics.oracle_decision(scores, labels, 0.001)
