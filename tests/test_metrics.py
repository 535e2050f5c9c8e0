"""Metrics against a deliberately naive reference (threshold by threshold, pair by pair), ties and degenerate cases included."""
from __future__ import annotations

import math

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
def test_one_class_is_nan_not_a_crash(label):
    scores = np.array([0.1, 0.5, 0.5, 2.0])
    labels = np.full(4, label)
    check_all(scores, labels)
    assert math.isnan(metrics.auc(scores, labels))
    summary = metrics.summarize(scores, labels, decision=scores > 0.2)
    assert math.isnan(summary["auc"])
    rates = summary["decision"]
    assert math.isnan(rates["tpr"] if label == 0 else rates["fpr"])


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


def test_summarize_keys():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    summary = metrics.summarize(scores, labels, decision=scores > 1)
    assert list(summary["tpr_at_fpr"]) == ["1%", "0.1%", "0.01%", "0%"]
    assert summary["n_members"] + summary["n_nonmembers"] == 200
    assert 0.5 <= summary["balanced_accuracy"] <= 1
    assert set(summary["decision"]) == {"fpr", "tpr"}


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
