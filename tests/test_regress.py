"""Quantile regressors: pinball loss, grouped bag = separate members, batched = looped training, seeding, plans, heads, shifts, inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qmia_fast import regress
from qmia_fast.errors import ConfigError, InputError

TINY = dict(width=4, depth=1, head_width=8, epochs=2, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brightness_data(n=160, size=8, seed=0):
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0, 1, n)
    images = np.clip(brightness[:, None, None, None] * 255 + rng.normal(0, 10, (n, 1, size, size)), 0, 255)
    targets = (0.1 + brightness) * rng.standard_normal(n)
    return images.astype(np.uint8), targets


def test_pinball_loss_matches_formula():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(50, 3)), rng.normal(size=(50, 1))
    levels = np.array([0.01, 0.5, 0.9])
    u = target - pred
    expected = np.maximum(levels * u, (levels - 1) * u)
    got = regress.pinball_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(levels)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_grouped_bag_equals_its_members():
    torch.manual_seed(0)
    members = [regress.BaggedResNet(1, 2, 3, width=4, depth=2, head_width=8, stem_stride=2) for _ in range(3)]
    for m in members:  # non-trivial running statistics, so eval mode is really compared
        m.train()
        m(torch.randn(16, 2, 12, 12))
        m.eval()
    bag = regress.stack_models(members).eval()
    x = torch.randn(5, 2, 12, 12)
    with torch.no_grad():
        together = bag(x)
        apart = torch.stack([m(x)[:, 0] for m in members], dim=1)
    assert together.shape == (5, 3, 3)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


def test_monotone_levels_never_cross():
    torch.manual_seed(0)
    net = regress.BaggedResNet(2, 1, 4, width=4, depth=1, head_width=8, monotone=True)
    with torch.no_grad():
        net.head_out.weight.normal_(0, 5)  # large random outputs would cross without the construction
        out = net.eval()(torch.randn(64, 1, 8, 8))
    assert (out.diff(dim=-1) > 0).all()


def test_init_output_starts_at_the_given_quantiles():
    net = regress.BaggedResNet(3, 1, 3, width=4, depth=1, head_width=8)
    with torch.no_grad():
        net.head_out.weight.zero_()
    net.init_output([-2.0, -1.0, 0.5])
    with torch.no_grad():
        out = net.eval()(torch.randn(4, 1, 8, 8))
    torch.testing.assert_close(out, torch.tensor([-2.0, -1.0, 0.5]).expand(4, 3, 3), rtol=1e-5, atol=1e-5)


def test_auto_stem_stride():
    assert regress.auto_stem_stride(8, 8) == 1
    assert regress.auto_stem_stride(28, 28) == 4
    assert regress.auto_stem_stride(32, 32) == 4
    assert regress.auto_stem_stride(64, 64) == 8


def test_bootstrap_plans_hold_out_out_of_bag_images():
    seeds = [regress.derive_seed(0, 0, j) for j in range(5)]
    plans = regress.bootstrap_plans(200, seeds, 0.1)
    assert len({len(p.val) for p in plans}) == 1 and len(plans[0].val) == 20
    for plan in plans:
        assert len(plan.train) == 200
        assert not set(plan.val) & set(plan.train)
    assert not np.array_equal(plans[0].train, plans[1].train)
    single = regress.holdout_plan(200, 7, 0.1)
    assert len(single.val) == 20 and len(single.train) == 180
    assert not set(single.val) & set(single.train)


def test_derive_seed_streams_are_distinct_and_stable():
    seeds = {regress.derive_seed(3, 0, j) for j in range(50)} | {regress.derive_seed(3, 1)}
    assert len(seeds) == 51
    assert regress.derive_seed(3, 0, 2) == regress.derive_seed(3, 0, 2)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def _fit(images, targets, n_models=3, levels=(0.1,), seed=0, aux=None, **options):
    seeds = [regress.derive_seed(seed, 0, j) for j in range(n_models)]
    plans = regress.bootstrap_plans(len(targets), seeds, 0.1)
    config = regress.RegressorConfig(**{**TINY, **options})
    return regress.fit_bag(images, targets, plans, seeds, list(levels), config, aux=aux)


def test_batched_training_equals_training_member_by_member():
    images, targets = brightness_data()
    batched = _fit(images, targets, batched=True).predict(images)
    looped = _fit(images, targets, batched=False).predict(images)
    assert batched.shape == (3, len(targets), 1)
    # Same seeds and samples: only float rounding of grouped vs plain convolutions differs.
    np.testing.assert_allclose(batched, looped, rtol=0, atol=2e-3)


def test_members_that_stop_early_leave_the_group_without_changing_the_rest():
    images, targets = brightness_data()
    options = dict(epochs=8, patience=1, n_models=4, lr=0.05)  # a high rate makes validation loss bounce
    batched = _fit(images, targets, batched=True, **options)
    looped = _fit(images, targets, batched=False, **options)
    assert len(set(batched.history.epochs_run)) > 1  # members did stop at different epochs
    assert batched.history.epochs_run == looped.history.epochs_run
    assert batched.history.best_epoch == looped.history.best_epoch
    np.testing.assert_allclose(batched.predict(images), looped.predict(images), rtol=0, atol=2e-3)


def test_same_seed_same_thresholds_other_seed_other_thresholds():
    images, targets = brightness_data()
    first = _fit(images, targets).predict(images)
    again = _fit(images, targets).predict(images)
    other = _fit(images, targets, seed=1).predict(images)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_several_levels_and_aux_channels():
    images, targets = brightness_data()
    aux = np.random.default_rng(1).normal(size=(len(targets), 2, 8, 8)).astype(np.float32)
    bag = _fit(images, targets, n_models=2, levels=(0.05, 0.5, 0.95), aux=aux)
    quantiles = bag.predict(images, aux=aux)
    assert quantiles.shape == (2, len(targets), 3)
    assert (np.diff(quantiles, axis=2) > 0).all()
    with pytest.raises(InputError, match="aux"):
        bag.predict(images)


def test_state_round_trip_predicts_the_same():
    images, targets = brightness_data()
    bag = _fit(images, targets, n_models=2)
    clone = regress.QuantileBag.from_state(bag.state())
    np.testing.assert_array_equal(bag.predict(images), clone.predict(images))


def test_shifts_add_to_every_member_and_survive_a_round_trip():
    images, targets = brightness_data(n=200)
    bag = _fit(images, targets, n_models=2, levels=(0.1, 0.5))
    raw = bag.predict(images)
    bag.set_shifts([-0.3, 0.2])
    shifted = bag.predict(images)
    # Added as they are, no re-sorting: the alpha column must stay exactly the calibrated one.
    np.testing.assert_array_equal(shifted, raw + np.array([-0.3, 0.2]))
    np.testing.assert_array_equal(bag.predict(images, calibrated=False), raw)
    clone = regress.QuantileBag.from_state(bag.state())
    np.testing.assert_array_equal(clone.predict(images), shifted)
    with pytest.raises(ConfigError, match="one shift per level"):
        bag.set_shifts([0.1])


def test_member_alone_predicts_its_column_of_the_bag():
    images, targets = brightness_data()
    bag = _fit(images, targets, n_models=3)
    together = bag.predict(images)
    for j in range(3):
        np.testing.assert_allclose(bag.member(j).predict(images)[0], together[j], rtol=0, atol=1e-6)
    assert bag.member(1).history.best_epoch == bag.history.best_epoch[1:2]


def test_full_data_plans_hold_out_disjoint_equal_folds():
    seeds = [regress.derive_seed(0, 0, j) for j in range(7)]
    plans = regress.full_data_plans(203, seeds, 0.1, fold_seed=5)
    assert len({len(p.val) for p in plans}) == 1 and len(plans[0].val) == 20   # 10 folds of 203 // 10
    assert len({len(p.train) for p in plans}) == 1 and len(plans[0].train) == 183
    vals = np.concatenate([p.val for p in plans])
    assert len(set(vals)) == len(vals)                                           # disjoint
    for plan in plans:
        assert not set(plan.val) & set(plan.train) and len(set(plan.train)) == len(plan.train)
    many = regress.full_data_plans(100, list(range(15)), 0.1, fold_seed=1)       # more members than 1/holdout_frac
    assert len(many[0].val) == 6 and len(many[0].train) == 94
    with pytest.raises(InputError, match="too few"):
        regress.full_data_plans(5, list(range(7)), 0.1, fold_seed=1)


def test_gaussian_head_quantiles_are_mu_plus_sigma_z():
    from statistics import NormalDist

    torch.manual_seed(0)
    levels = [0.01, 0.5, 0.9]
    net = regress.BaggedResNet(2, 1, 3, width=4, depth=1, head_width=8, head="gaussian", levels=levels).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        raw, quantiles = net.head_outputs(x), net(x)
    z = torch.tensor([NormalDist().inv_cdf(v) for v in levels])
    torch.testing.assert_close(quantiles, raw[..., :1] + torch.exp(raw[..., 1:2]) * z)


def test_gaussian_head_fits_a_heteroscedastic_spread():
    images, targets = brightness_data(n=600)
    bag = _fit(images, targets, n_models=1, levels=(0.1, 0.5), head="gaussian", epochs=12, lr=0.01)
    q = bag.predict(images)[0]
    spread = q[:, 1] - q[:, 0]  # median minus the 10% quantile: 1.28 sd of the target given the image
    brightness = images.reshape(len(images), -1).mean(axis=1)
    assert np.corrcoef(spread, brightness)[0, 1] > 0.5


def test_early_stopping_records_history():
    images, targets = brightness_data()
    bag = _fit(images, targets, epochs=6, patience=1)
    history = bag.history
    assert len(history.epochs_run) == 3
    assert all(1 <= b <= e <= 6 for b, e in zip(history.best_epoch, history.epochs_run))
    assert all(np.isfinite(history.best_val_loss))


def test_float_images_match_uint8_images():
    images, targets = brightness_data(n=64)
    as_uint8 = _fit(images, targets, n_models=1).predict(images)
    as_float = _fit(images.astype(np.float32) / 255.0, targets, n_models=1).predict(torch.from_numpy(images))
    np.testing.assert_allclose(as_uint8, as_float, atol=1e-4)


def test_progress_bar_runs(capsys):
    images, targets = brightness_data(n=64)
    seeds = [1, 2]
    plans = regress.bootstrap_plans(64, seeds, 0.1)
    regress.fit_bag(images, targets, plans, seeds, [0.5], regress.RegressorConfig(**TINY), progress=True)
    assert "training" in capsys.readouterr().err


@pytest.mark.parametrize("images, fragment", [
    (np.zeros((4, 8, 8), np.uint8), "N x C x H x W"),
    (np.full((4, 1, 8, 8), 2.0, np.float32), r"\[0, 1\]"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), "NaN"),
    (np.zeros((4, 1, 8, 8), np.complex64), "uint8 or float"),
    (np.zeros((0, 1, 8, 8), np.uint8), "empty"),
    ([[1, 2]], "numpy array or torch tensor"),
])
def test_bad_images(images, fragment):
    with pytest.raises(InputError, match=fragment):
        regress.as_image_tensor(images)


@pytest.mark.parametrize("options, fragment", [
    (dict(width=0), "width"),
    (dict(epochs=1.5), "epochs"),
    (dict(lr=-1.0), "lr"),
    (dict(holdout_frac=0.7), "holdout_frac"),
    (dict(device="tpu"), "device"),
    (dict(stem_stride=0), "stem_stride"),
    (dict(head="laplace"), "head"),
    (dict(ensemble="jackknife"), "ensemble"),
])
def test_bad_config(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        regress.RegressorConfig(**options).validate()


@pytest.mark.parametrize("levels", [[], [0.0], [0.5, 0.2], [0.2, 1.0], ["x"]])
def test_bad_levels(levels):
    with pytest.raises(ConfigError, match="levels"):
        regress.check_levels(levels)


def test_cuda_device_without_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="CUDA"):
        regress.RegressorConfig(device="cuda").validate()


@pytest.mark.cuda
def test_cuda_fit_matches_cpu_closely():
    images, targets = brightness_data()
    cpu = _fit(images, targets, n_models=2).predict(images)
    gpu = _fit(images, targets, n_models=2, device="cuda").predict(images)
    np.testing.assert_allclose(cpu, gpu, atol=5e-2)
