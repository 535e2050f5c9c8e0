"""Tests of the noise schedules: SecMI's 0-based abar, known values, cosine shape, diffusers equivalence, DDIM coefficients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qmia_fast.errors import ConfigError
from qmia_fast.schedule import (
    MAX_STEPS,
    Schedule,
    cosine_schedule,
    linear_schedule,
    schedule_from_dict,
    schedule_from_diffusers_config,
)


def test_linear_defaults_match_secmi_indexing():
    sched = linear_schedule()
    assert sched.T == 1000
    assert sched.betas.dtype == np.float64 and sched.abar.dtype == np.float64
    assert sched.betas[0] == 1e-4 and sched.betas[-1] == 0.02
    assert sched.abar[0] == 1.0 - 1e-4  # 0-based: abar[0] already includes beta[0]
    # An independent running product, the way SecMI's code builds alphas_cumprod.
    running = 1.0
    for t in range(200):
        running *= 1.0 - (1e-4 + (0.02 - 1e-4) * t / 999)
    assert sched.abar[199] == pytest.approx(running, rel=1e-12)
    assert sched.abar[-1] == pytest.approx(4.0358e-5, rel=1e-4)  # DDPM's well-known terminal value


def test_abar_at_int_array_and_tensor():
    sched = linear_schedule()
    assert isinstance(sched.abar_at(100), float)
    assert sched.abar_at(100) == sched.abar[100]
    arr = sched.abar_at(np.array([0, 100, 999]))
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float64
    np.testing.assert_array_equal(arr, sched.abar[[0, 100, 999]])
    tensor = sched.abar_at(torch.tensor([[1, 2], [3, 4]]))
    assert tensor.dtype == torch.float64 and tensor.shape == (2, 2)
    np.testing.assert_array_equal(tensor.numpy(), sched.abar[[[1, 2], [3, 4]]])


@pytest.mark.parametrize("bad", [-1, 1000, [0, 1000], torch.tensor([5, -3])])
def test_timestep_out_of_range_names_t(bad):
    sched = linear_schedule()
    with pytest.raises(ConfigError, match=r"t = (-1|1000|-3)"):
        sched.abar_at(bad)


def test_ddim_coefficients_reproduce_the_two_line_step():
    sched = linear_schedule()
    rng = np.random.default_rng(0)
    x, eps = rng.normal(size=5), rng.normal(size=5)
    for t_cur, t_next in [(0, 10), (90, 100), (100, 90), (500, 999)]:
        abar_c, abar_n = sched.abar[t_cur], sched.abar[t_next]
        x0_hat = (x - math.sqrt(1 - abar_c) * eps) / math.sqrt(abar_c)
        expected = math.sqrt(abar_n) * x0_hat + math.sqrt(1 - abar_n) * eps
        c1, c2 = sched.ddim_coefficients(t_cur, t_next)
        assert isinstance(c1, float) and isinstance(c2, float)
        np.testing.assert_allclose(c1 * x + c2 * eps, expected, rtol=1e-12, atol=1e-12)
    c1, c2 = sched.ddim_coefficients(5, 5)
    assert c1 == pytest.approx(1.0) and c2 == pytest.approx(0.0, abs=1e-15)


def test_ddim_coefficients_per_sample():
    sched = linear_schedule()
    t_cur = torch.tensor([0, 10, 20], dtype=torch.int64)
    c1, c2 = sched.ddim_coefficients(t_cur, t_cur + 10)
    assert c1.dtype == torch.float64 and c1.shape == (3,)
    for i, t in enumerate([0, 10, 20]):
        s1, s2 = sched.ddim_coefficients(t, t + 10)
        assert c1[i].item() == s1 and c2[i].item() == s2
    a1, _ = sched.ddim_coefficients(np.array([0, 10]), 20)
    assert isinstance(a1, np.ndarray) and a1.shape == (2,)
    with pytest.raises(ConfigError, match="t_next = 1000"):
        sched.ddim_coefficients(t_cur, 1000)


def test_cosine_is_monotone_and_clipped():
    sched = cosine_schedule()
    assert np.all(np.diff(sched.abar) < 0)
    assert np.all(sched.betas <= 0.999) and sched.betas.max() == 0.999
    assert sched.abar[0] == pytest.approx(1 - sched.betas[0])
    # abar follows f(t)/f(0) with f(t) = cos((t/T + s)/(1 + s) pi/2)^2 until the clip bites.
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert sched.abar[499] == pytest.approx(f(500) / f(0), rel=1e-12)


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule, lambda: linear_schedule(10, 0.001, 0.2)])
def test_dict_round_trip(make):
    sched = make()
    spec = sched.to_dict()
    assert len(str(spec)) < 200  # formula, not a thousand numbers
    assert Schedule.from_dict(spec) == sched


def test_dict_round_trip_of_arbitrary_betas():
    sched = Schedule(np.linspace(0.01, 0.3, 7))
    assert schedule_from_dict(sched.to_dict()) == sched
    assert schedule_from_dict({"T": 50, "beta_1": 0.001, "beta_T": 0.05}) == linear_schedule(50, 0.001, 0.05)


@pytest.mark.parametrize("spec", [
    {"kind": "nope"},
    {"kind": "linear", "T": 0},
    {"kind": "linear", "beta_1": 2.0},
    {"kind": "betas", "betas": [0.1, -0.2]},
    {"beta_schedule": "laplace-ish"},
    {"kind": "scaled_linear"},
])
def test_bad_schedule_specs(spec):
    with pytest.raises(ConfigError):
        schedule_from_dict(spec)


DIFFUSERS_CONFIGS = [
    {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"},
    {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"},
    {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
    {"num_train_timesteps": 500, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "sigmoid"},
    {"num_train_timesteps": 4, "trained_betas": [0.1, 0.2, 0.3, 0.4]},
    {"num_train_timesteps": 1000, "beta_schedule": "linear", "rescale_betas_zero_snr": True},
]


@pytest.mark.parametrize("config", DIFFUSERS_CONFIGS)
def test_diffusers_config_matches_ddpm_scheduler(config, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(**config).alphas_cumprod.double().numpy()
    ours = schedule_from_diffusers_config(config)
    # diffusers works in float32; we in float64.
    np.testing.assert_allclose(ours.abar, reference, rtol=2e-5, atol=1e-7)
    path = tmp_path / "scheduler_config.json"
    path.write_text(__import__("json").dumps(config))
    assert schedule_from_diffusers_config(path) == ours
    assert schedule_from_diffusers_config(tmp_path) == ours


def test_cosine_equals_squaredcos_cap_v2():
    assert schedule_from_diffusers_config({"beta_schedule": "squaredcos_cap_v2"}) == cosine_schedule()


@pytest.mark.parametrize("call", [
    lambda: linear_schedule(10**9),
    lambda: linear_schedule(float("inf")),
    lambda: cosine_schedule(10**7),
    lambda: schedule_from_diffusers_config({"trained_betas": [[0.1, 0.2], [0.3]]}),
    lambda: schedule_from_dict({"kind": "betas", "betas": "abc"}),
    lambda: schedule_from_dict({"kind": "betas", "betas": [0.01] * (MAX_STEPS + 1)}),
])
def test_oversized_or_malformed_schedules_are_config_errors_before_any_array(call):
    with pytest.raises(ConfigError):
        call()


def test_a_scheduler_config_is_read_like_every_other_config(tmp_path):
    """Size cap, regular files only, a JSON object, a bounded step count: as every other config reader."""
    import os

    from qmia_fast.errors import QmiaError
    from qmia_fast.schedule import schedule_from_diffusers_config

    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * (17 << 20) + b"}")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    huge = tmp_path / "huge.json"
    huge.write_text('{"num_train_timesteps": 1000000000}')
    for path, words in ((big, "larger"), (fifo, "not a regular file"), (listed, "JSON object"), (huge, "steps")):
        with pytest.raises(QmiaError, match=words):
            schedule_from_diffusers_config(path)
