"""Conformal calibration: the exact rank, the calibration part's size, the finite-sample guarantee by simulation, the fallback."""
from __future__ import annotations

import numpy as np
import pytest

from qmia_fast.attack import QuantileAttack, synthetic_problem
from qmia_fast.regress import calibration as conformal

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(width=4, depth=1, head_width=8, stem_stride=2, epochs=2, batch_size=64)


@pytest.mark.parametrize("n, level, rank", [
    (99, 0.01, 1),      # floor(0.01 * 100) = 1: the smallest residual
    (98, 0.01, 0),      # floor(0.99): no residual is small enough
    (99, 0.29, 29),     # 0.29 * 100 is 28.999999999999996 in binary floating point; the rank must not lose one
    (399, 0.01, 4),
    (1999, 0.001, 2),
    (0, 0.5, 0),
])
def test_conformal_rank_is_floor_of_level_times_n_plus_one(n, level, rank):
    assert conformal.conformal_rank(n, level) == rank


def test_minimum_and_default_calibration_sizes():
    assert conformal.min_calibration_size(0.01) == 99
    assert conformal.min_calibration_size(0.001) == 999
    assert conformal.min_calibration_size(0.3) == 3   # floor(0.3 * 4) = 1, floor(0.3 * 3) = 0
    assert conformal.calibration_size(2000, 0.01) == 400            # 20%
    assert conformal.calibration_size(2000, 0.001) == 999           # enough for one rank
    assert conformal.calibration_size(300, 0.01) == 99
    assert conformal.calibration_size(150, 0.01) == 0               # half of 150 is too few: refuse


def test_shift_is_the_kth_smallest_residual():
    residuals = np.array([5.0, -1.0, 3.0, 0.5, 2.0, -4.0, 1.0, 7.0, 6.0])  # n = 9
    found = conformal.conformal_shift(residuals, 0.2)   # floor(0.2 * 10) = 2
    assert found.rank == 2 and found.shift == -1.0 and found.bound == pytest.approx(0.2)
    assert conformal.conformal_shift(residuals, 0.05) is None


@pytest.mark.parametrize("n, level", [(99, 0.05), (199, 0.01), (40, 0.1)])
def test_exchangeable_false_positive_rate_is_k_over_n_plus_one(n, level):
    """The guarantee by simulation: over many calibration draws, P(r_test < shift) = k/(n+1) <= level.

    For continuous residuals the rate is exactly k/(n+1); one rank more would give
    (k+1)/(n+1), which the Monte Carlo error here (about 0.0007) tells apart.
    """
    rng = np.random.default_rng(0)
    trials = 100_000
    calibration = rng.standard_normal((trials, n))
    test = rng.standard_normal(trials)
    k = conformal.conformal_rank(n, level)
    shift = np.sort(calibration, axis=1)[:, k - 1]
    rate = float((test < shift).mean())
    error = 4 * np.sqrt(level * (1 - level) / trials)
    assert rate <= level + error
    assert abs(rate - k / (n + 1)) <= error
    assert rate < (k + 1) / (n + 1) - error
    # The uncalibrated empirical quantile of the same residuals (numpy's interpolation) exceeds the bound.
    raw = np.quantile(calibration, level, axis=1)
    assert float((test < raw).mean()) > k / (n + 1) + error


def _fpr(attack, problem):
    result = attack.predict(problem.images, problem.scores)
    return float(result.decision[problem.labels == 0].mean()), float(result.marginal.decision[problem.labels == 0].mean())


@pytest.mark.slow
def test_attack_decision_fpr_is_at_most_alpha_over_seeds_and_the_raw_rule_exceeds_it():
    """End to end on exchangeable synthetic data: mean observed FPR over seeds, conformal against the raw rule."""
    alpha, seeds = 0.02, 12
    evaluation = synthetic_problem(20_000, 0, seed=999)
    conformal_fpr, raw_fpr = [], []
    for seed in range(seeds):
        public = synthetic_problem(400, 0, seed=seed)
        options = dict(alpha=alpha, n_models=3, seed=seed, regressor="paper", baselines=False, **TINY)
        conformal_fpr.append(_fpr(QuantileAttack(calibration="conformal", **options).fit(public.images,
                                                                                          public.scores), evaluation)[0])
        raw_fpr.append(_fpr(QuantileAttack(calibration="none", **options).fit(public.images, public.scores),
                            evaluation)[0])
    # Each run's FPR varies with its calibration draw (k = 2 of 99 here); the guarantee is on the mean.
    spread = np.std(conformal_fpr, ddof=1) / np.sqrt(seeds)
    assert np.mean(conformal_fpr) <= alpha + 2 * spread, conformal_fpr
    assert np.mean(raw_fpr) > alpha + 2 * np.std(raw_fpr, ddof=1) / np.sqrt(seeds), raw_fpr


def test_too_small_public_set_falls_back_with_a_warning_never_silently():
    public = synthetic_problem(150, 0, seed=1)
    attack = QuantileAttack(alpha=0.01, n_models=2, regressor="paper", **TINY).fit(public.images, public.scores)
    info = attack.fit_info["calibration"]
    assert info["method"] == "none" and info["requested"] == "conformal"
    assert "at least 99 calibration images" in info["warning"] and "--calibration none" in info["warning"]
    assert attack.fit_info["n_training"] == 150


def test_calibration_part_never_trains_and_its_size_is_recorded():
    public = synthetic_problem(500, 0, seed=2)
    attack = QuantileAttack(alpha=0.05, n_models=3, regressor="paper", **TINY).fit(public.images, public.scores)
    info = attack.fit_info["calibration"]
    assert info["method"] == "conformal" and info["n_calibration"] == 100 and info["n_training"] == 400
    assert info["bag"]["rank"] == 5 and info["bag"]["fpr_bound"] == pytest.approx(5 / 101)
    assert "exchangeable" in info["assumption"]
    # The bag's alpha thresholds are shifted by the one recorded shift, on every member.
    assert np.allclose(attack.bag.offsets[:, 0], info["bag"]["shift"])
    # rank - 1 calibration residuals of the vote lie strictly below the shift; the rank-th equals it, and
    # float rounding of q_j + shift may put that one either side.
    train, held = conformal.split_public(500, 100, _calibration_seed(attack))
    result = attack.predict(public.images[held], public.scores[held])
    assert info["bag"]["rank"] - 1 <= int(result.decision.sum()) <= info["bag"]["rank"]


def _calibration_seed(attack):
    from qmia_fast.seeds import derive_seed

    return derive_seed(attack.seed, 2)


def test_marginal_threshold_is_the_conformal_order_statistic():
    public = synthetic_problem(300, 0, seed=4)
    attack = QuantileAttack(alpha=0.05, n_models=1, regressor="paper", baselines=False, **TINY)
    attack.fit(public.images, public.scores)
    log_scores = np.sort(np.log(public.scores))
    assert attack.marginal_threshold == log_scores[conformal.conformal_rank(300, 0.05) - 1]
    raw = QuantileAttack(alpha=0.05, n_models=1, regressor="paper", baselines=False, calibration="none", **TINY)
    assert raw.fit(public.images, public.scores).marginal_threshold == np.quantile(log_scores, 0.05)
