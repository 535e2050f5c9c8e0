"""QuantileAttack: vote kernel against numpy, the synthetic heteroscedastic problem (FPR at alpha, per-image beats marginal), persistence, settings, inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qmia_fast.kernels
from qmia_fast import metrics
from qmia_fast.attack import (BAG, MARGINAL, SINGLE, QuantileAttack, majority_vote, pvalue_score,
                              synthetic_problem)
from qmia_fast.errors import ConfigError, DataError, InputError

# Small regressors keep the suite quick; the defaults are exercised by bench/bench_attack.py.
SMALL = dict(width=8, depth=1, head_width=16, stem_stride=2, epochs=3, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def numpy_vote(scores, thresholds):
    """The vote as the interface defines it, in numpy: member iff score < threshold, majority of B."""
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    votes = (scores[None, :] < thresholds).sum(axis=0).astype(np.int32)
    return votes, 2 * votes > thresholds.shape[0], (thresholds - scores[None, :]).mean(axis=0)


def test_vote_kernel_equals_numpy_with_ties():
    rng = np.random.default_rng(0)
    for n_models, n in [(1, 1), (7, 1000), (6, 513), (4, 0)]:
        # Values on a coarse grid: many scores equal some of their thresholds exactly.
        scores = rng.integers(-3, 4, n) / 2.0
        thresholds = rng.integers(-3, 4, (n_models, n)) / 2.0
        for dtype in (torch.float32, torch.float64):
            votes, decision, margin = qmia_fast.kernels.vote(torch.tensor(scores, dtype=dtype),
                                                             torch.tensor(thresholds, dtype=dtype))
            ref_votes, ref_decision, ref_margin = numpy_vote(scores, thresholds)
            assert votes.dtype == torch.int32 and decision.dtype == torch.bool
            np.testing.assert_array_equal(votes.numpy(), ref_votes)
            np.testing.assert_array_equal(decision.numpy(), ref_decision)
            np.testing.assert_allclose(margin.numpy(), ref_margin, rtol=1e-6, atol=1e-6)
        got_votes, got_decision = majority_vote(scores, thresholds)
        np.testing.assert_array_equal(got_votes, ref_votes)
        np.testing.assert_array_equal(got_decision, ref_decision)


def test_vote_kernel_random_continuous_inputs():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=5000)
    thresholds = scores[None, :] + rng.normal(size=(7, 5000)) * 0.1
    thresholds[:, ::3] = scores[::3]  # exact ties: never a member vote
    votes, decision, _ = qmia_fast.kernels.vote(torch.from_numpy(scores), torch.from_numpy(thresholds))
    ref_votes, ref_decision, _ = numpy_vote(scores, thresholds)
    np.testing.assert_array_equal(votes.numpy(), ref_votes)
    np.testing.assert_array_equal(decision.numpy(), ref_decision)
    assert not decision.numpy()[::3].any()


def test_pvalue_score_interpolates_the_cdf():
    levels = [0.1, 0.5, 0.9]
    quantiles = np.array([[[0.0, 1.0, 2.0]] * 4])  # one model, four samples
    y = np.array([0.5, 1.0, -1.0, 3.0])
    np.testing.assert_allclose(pvalue_score(y, quantiles, levels), [-0.3, -0.5, 0.3, -1.3])


# --- the synthetic problem at N = 20,000 ------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_run(one_torch_thread_per_module):
    public = synthetic_problem(20_000, seed=11)
    evaluation = synthetic_problem(20_000, 2_000, seed=12)
    attack = QuantileAttack(alpha=0.01, n_models=7, seed=0, width=8, depth=1, head_width=16, stem_stride=2,
                            epochs=4, batch_size=512, baselines=True)
    attack.fit(public.images, public.scores)
    return attack, evaluation, attack.predict(evaluation.images, evaluation.scores)


def test_bag_fpr_on_holdout_nonmembers_is_alpha(synthetic_run):
    _, evaluation, result = synthetic_run
    nonmembers = evaluation.labels == 0
    observed_fpr = result.decision[nonmembers].mean()
    assert abs(observed_fpr - 0.01) <= 0.005, observed_fpr


def test_per_image_thresholds_beat_the_marginal_threshold(synthetic_run):
    _, evaluation, result = synthetic_run
    methods = result.methods()
    assert list(methods) == [BAG, SINGLE, MARGINAL]
    tpr = {name: metrics.tpr_at_fpr(m.score, evaluation.labels, 0.01) for name, m in methods.items()}
    # Oracle per-image thresholds reach about 8% here, the marginal threshold about 2%.
    assert tpr[BAG] > 2 * tpr[MARGINAL], tpr
    assert tpr[SINGLE] > 2 * tpr[MARGINAL], tpr
    marginal_fpr = result.marginal.decision[evaluation.labels == 0].mean()
    assert abs(marginal_fpr - 0.01) <= 0.005


def test_result_shapes_and_consistency(synthetic_run):
    attack, evaluation, result = synthetic_run
    n = len(evaluation.labels)
    assert result.decision.shape == (n,) and result.decision.dtype == bool
    assert result.votes.shape == (n,) and result.votes.min() >= 0 and result.votes.max() <= 7
    assert result.thresholds.shape == (7, n)
    np.testing.assert_array_equal(result.decision, 2 * result.votes > 7)
    np.testing.assert_allclose(result.score, result.thresholds.mean(0) - np.log(evaluation.scores))
    np.testing.assert_allclose(result.marginal.score, attack.marginal_threshold - np.log(evaluation.scores))
    assert attack.fit_info["n_public"] == 20_000
    assert attack.fit_info["timings"]["fit_bag_s"] > 0


def test_save_load_round_trip(synthetic_run, tmp_path):
    attack, evaluation, result = synthetic_run
    path = tmp_path / "attack.pt"
    attack.save(path)
    loaded = QuantileAttack.load(path)
    assert loaded.params() == attack.params()
    again = loaded.predict(evaluation.images[:500], evaluation.scores[:500])
    np.testing.assert_array_equal(again.thresholds, result.thresholds[:, :500])
    np.testing.assert_array_equal(again.decision, result.decision[:500])
    np.testing.assert_array_equal(again.single.score, result.single.score[:500])


# --- small fits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_problem():
    return synthetic_problem(300, 100, seed=3)


def test_same_seed_same_result(small_problem):
    p = small_problem
    first = QuantileAttack(n_models=3, seed=5, **SMALL).fit(p.images, p.scores).predict(p.images, p.scores)
    again = QuantileAttack(n_models=3, seed=5, **SMALL).fit(p.images, p.scores).predict(p.images, p.scores)
    np.testing.assert_array_equal(first.thresholds, again.thresholds)
    np.testing.assert_array_equal(first.single.thresholds, again.single.thresholds)


def test_conformal_attack_round_trips(small_problem, tmp_path):
    p = small_problem
    attack = QuantileAttack(n_models=3, regressor="paper", **SMALL).fit(p.images, p.scores)
    assert attack.fit_info["calibration"]["method"] == "conformal"
    assert attack.bag.offsets.any() and attack.single.offsets.any()
    result = attack.predict(p.images, p.scores)
    attack.save(tmp_path / "a.pt")
    loaded = QuantileAttack.load(tmp_path / "a.pt")
    assert loaded.params() == attack.params() and loaded.fit_info["calibration"] == attack.fit_info["calibration"]
    again = loaded.predict(p.images, p.scores)
    assert again.thresholds.tolist() == result.thresholds.tolist()


def test_paper_setting_without_calibration_is_the_earlier_default_exactly(small_problem):
    """regressor="paper", calibration="none": bootstrap bag on all public images, the raw rule (pinned by hand)."""
    from qmia_fast import regress
    from qmia_fast.seeds import derive_seed

    p = small_problem
    attack = QuantileAttack(n_models=3, seed=5, regressor="paper", calibration="none", **SMALL)
    result = attack.fit(p.images, p.scores).predict(p.images, p.scores)
    y = np.log(p.scores)
    seeds = [derive_seed(5, 0, j) for j in range(3)]
    config = regress.RegressorConfig(**SMALL)
    bag = regress.fit_bag(p.images, y, regress.bootstrap_plans(len(y), seeds, config.holdout_frac), seeds, [0.01],
                          config)
    np.testing.assert_array_equal(result.thresholds, bag.predict(p.images)[:, :, 0])
    assert attack.marginal_threshold == np.quantile(y, 0.01)
    assert attack.fit_info["calibration"]["method"] == "none" and not attack.bag.offsets.any()


def test_full_data_ensemble_and_its_single_member(small_problem):
    p = small_problem
    attack = QuantileAttack(n_models=3, regressor="full", calibration="none", **SMALL).fit(p.images, p.scores)
    assert attack.config.ensemble == "full"
    result = attack.predict(p.images, p.scores)
    # The single-regressor baseline is member 0 of the ensemble, alone.
    # (grouped and plain convolutions round differently in float32)
    np.testing.assert_allclose(result.single.thresholds[0], result.thresholds[0], rtol=0, atol=1e-5)
    assert "member 0" in attack.fit_info["single_regressor"]


def test_several_levels_and_pvalue_score(small_problem):
    p = small_problem
    attack = QuantileAttack(alpha=0.05, n_models=2, levels=[0.5, 0.2], score="pvalue", baselines=False, **SMALL)
    assert attack.levels == [0.05, 0.2, 0.5]
    result = attack.fit(p.images, p.scores).predict(p.images, p.scores)
    assert result.single is None and list(result.methods()) == [BAG, MARGINAL]
    assert result.thresholds.shape == (2, len(p.scores))
    assert np.isfinite(result.score).all()


def test_torch_inputs_are_accepted(small_problem):
    p = small_problem
    attack = QuantileAttack(n_models=1, baselines=False, **SMALL)
    attack.fit(torch.from_numpy(p.images), torch.from_numpy(p.scores))
    result = attack.predict(torch.from_numpy(p.images), torch.from_numpy(p.scores))
    assert result.decision.shape == (len(p.scores),)


@pytest.mark.parametrize("bad, fragment", [
    (0.0, "finite and > 0"),
    (-1.0, "finite and > 0"),
    (np.nan, "finite and > 0"),
    (np.inf, "finite and > 0"),
])
def test_bad_scores_name_scores(small_problem, bad, fragment):
    scores = small_problem.scores.copy()
    scores[7] = bad
    with pytest.raises(InputError, match="scores") as info:
        QuantileAttack(**SMALL).fit(small_problem.images, scores)
    assert fragment in str(info.value) and "index 7" in str(info.value)


def test_score_count_must_match_images(small_problem):
    with pytest.raises(InputError, match="scores has 5 entries"):
        QuantileAttack(**SMALL).fit(small_problem.images, small_problem.scores[:5])


def test_too_few_public_images():
    p = synthetic_problem(5)
    with pytest.raises(InputError, match="at least 10"):
        QuantileAttack(**SMALL).fit(p.images, p.scores)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(n_models=0), "n_models"),
    (dict(seed=-1), "seed"),
    (dict(score="auc"), "score"),
    (dict(score="pvalue"), "two quantile levels"),
    (dict(levels=[0.5, 2.0]), "levels"),
    (dict(colour="red"), "unknown QuantileAttack option"),
    (dict(width=0), "width"),
    (dict(calibration="cross"), "calibration must be one of conformal, none"),
    (dict(calibrate=True), "calibration='conformal'"),
    (dict(regressor="huge"), "regressor must be one of auto"),
    (dict(fit_budget=0), "fit_budget"),
    (dict(fit_budget="1 minute"), "fit_budget"),
    (dict(head="laplace"), "head must be one of"),
    (dict(ensemble="jackknife"), "ensemble must be one of"),
])
def test_bad_options(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        QuantileAttack(**kwargs)


def test_predict_and_save_need_a_fit(tmp_path, small_problem):
    attack = QuantileAttack()
    with pytest.raises(ConfigError, match="not fitted"):
        attack.predict(small_problem.images, small_problem.scores)
    with pytest.raises(ConfigError, match="unfitted"):
        attack.save(tmp_path / "a.pt")


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        QuantileAttack.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="not a fitted QuantileAttack"):
        QuantileAttack.load(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(DataError, match="not a fitted QuantileAttack"):
        QuantileAttack.load(other)


def test_synthetic_problem_is_heteroscedastic():
    p = synthetic_problem(4000, seed=1)
    log_score = np.log(p.scores)
    dark, bright = p.brightness < 0.2, p.brightness > 0.8
    assert log_score[bright].std() > 4 * log_score[dark].std()
    assert p.images.dtype == np.uint8 and p.images.shape == (4000, 1, 8, 8)
