"""The scorer against separate, step-by-step implementations of SecMI's t-error, the loss score and PIA."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import qmia_fast
from torch import nn

from qmia_fast.errors import ConfigError, InputError, QmiaError
from qmia_fast.kernels.reference import philox_normal_reference
from qmia_fast.models import EpsModel
from qmia_fast.schedule import linear_schedule
from qmia_fast.scoring import Scorer, score

import model_helpers


class CountingModel(EpsModel):
    """An EpsModel that counts its UNet evaluations per image."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_evals = 0

    def forward(self, x, t):
        self.image_evals += x.shape[0]
        return super().forward(x, t)


def tiny_model(channels: int = 1, size: int = 8, seed: int = 0) -> CountingModel:
    return model_helpers.tiny_model(channels, size, seed=seed, cls=CountingModel)


class SmoothEps(nn.Module):
    """A smooth, strongly time-dependent noise predictor.

    A random UNet is either nearly self-inverse (t-errors so small that float32 rounding
    of x dominates them) or chaotic (float32 rounding amplified through the network); this
    model is neither, so float32 implementations of the definitions agree to ~1e-6 and a
    1e-5 tolerance tests the procedure rather than the rounding.
    """

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.4)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g) * 0.1)

    def forward(self, x, t):
        scale = 1.0 + 0.8 * torch.sin(t.to(x.dtype) * 0.7).view(-1, 1, 1, 1)
        return torch.tanh(self.conv(x)) * scale + 0.3 * x


def smooth_model(seed: int = 0) -> CountingModel:
    return CountingModel(SmoothEps(3, seed), linear_schedule(), (3, 16, 16), {"kind": "test"}, format="test").eval()


def images(n: int, channels: int = 1, size: int = 8, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


# --- the definitions, written out the way SecMI's code runs them: one DDIM step at a time

def abar_table(T=1000, beta_1=1e-4, beta_T=0.02) -> torch.Tensor:
    betas = torch.linspace(beta_1, beta_T, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def as_model_input(imgs: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(imgs).to(dtype) / 255.0 * 2 - 1


def ddim_singlestep(model, x, t_c, t_target):
    # Square roots in float64, then cast to x's dtype. SecMI's own code rounds abar to
    # float32 first, and 1 - abar then loses ~1e-4 relative at small t (abar ~ 0.9999):
    # rounding error, not part of the definition.
    abar = abar_table()
    sqrt_c, sqrt_1m_c = abar[t_c].sqrt().to(x.dtype), (1 - abar[t_c]).sqrt().to(x.dtype)
    sqrt_t, sqrt_1m_t = abar[t_target].sqrt().to(x.dtype), (1 - abar[t_target]).sqrt().to(x.dtype)
    eps = model(x, torch.full((x.shape[0],), t_c, dtype=torch.long))
    x0_hat = (x - sqrt_1m_c * eps) / sqrt_c
    return sqrt_t * x0_hat + sqrt_1m_t * eps


def secmi_reference(model, imgs: np.ndarray, t_sec: int, k: int, dtype=torch.float32) -> np.ndarray:
    model = copy.deepcopy(model).to(dtype)
    x = as_model_input(imgs, dtype)
    with torch.no_grad():
        for t_c in range(0, t_sec - k, k):  # 0 -> k -> ... -> t_sec - k
            x = ddim_singlestep(model, x, t_c, t_c + k)
        x_tilde = x
        x_up = ddim_singlestep(model, x_tilde, t_sec - k, t_sec)
        x_back = ddim_singlestep(model, x_up, t_sec, t_sec - k)
        return ((x_back - x_tilde) ** 2).flatten(1).sum(1).double().numpy()


def loss_reference(model, imgs, t, seed, offset=0, dtype=torch.float32):
    model = copy.deepcopy(model).to(dtype)
    x0 = as_model_input(imgs, dtype)
    abar = abar_table()[t]
    eps = philox_normal_reference(tuple(x0.shape), seed, offset=offset).to(torch.float32).to(dtype)
    x_t = abar.sqrt().to(dtype) * x0 + (1 - abar).sqrt().to(dtype) * eps
    with torch.no_grad():
        pred = model(x_t, torch.full((len(x0),), t, dtype=torch.long))
    return ((pred - eps) ** 2).flatten(1).sum(1).double().numpy()


def pia_reference(model, imgs, t, p, dtype=torch.float32):
    model = copy.deepcopy(model).to(dtype)
    x0 = as_model_input(imgs, dtype)
    abar = abar_table()[t]
    with torch.no_grad():
        eps0 = model(x0, torch.zeros(len(x0), dtype=torch.long))
        x_t = abar.sqrt().to(dtype) * x0 + (1 - abar).sqrt().to(dtype) * eps0
        pred = model(x_t, torch.full((len(x0),), t, dtype=torch.long))
    return ((pred - eps0).abs() ** p).flatten(1).sum(1).double().numpy()


# --- the tests

@pytest.mark.parametrize("t_sec,k", [(100, 10), (50, 5), (20, 10), (10, 10)])
def test_secmi_matches_step_by_step_reference_and_counts_calls(t_sec, k):
    model = smooth_model()
    imgs = images(6, channels=3, size=16)
    expected = secmi_reference(model, imgs, t_sec, k)
    scorer = Scorer(model, "secmi", t_sec=t_sec, k=k, batch_size=4, unet_batch=2, device="cpu", precision="fp32")
    model.image_evals = 0  # the run plan may have called the model while it was resolved
    got = scorer.score(imgs)
    assert model.image_evals == len(imgs) * (t_sec // k + 1)
    assert got.dtype == np.float64 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # And against the definition carried out in float64 throughout.
    np.testing.assert_allclose(got, secmi_reference(model, imgs, t_sec, k, dtype=torch.float64), rtol=1e-5)


def test_loss_matches_reference_with_offsets():
    model = smooth_model()
    imgs = images(5, channels=3, size=16)
    expected = loss_reference(model, imgs, t=200, seed=7, offset=3)
    scorer = Scorer(model, "loss", t=200, seed=7, batch_size=2, unet_batch=1, device="cpu", precision="fp32")
    model.image_evals = 0
    got = scorer.score(imgs, offset=3)
    assert model.image_evals == 5
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_unet_scores_match_reference():
    # The real architecture end to end; its float32 rounding is amplified by random weights,
    # so the tolerance here is looser than for the smooth model above.
    model = tiny_model()
    imgs = images(6)
    np.testing.assert_allclose(score(model, imgs, device="cpu", precision="fp32"),
                               secmi_reference(model, imgs, 100, 10), rtol=1e-4)
    np.testing.assert_allclose(score(model, imgs, method="pia", device="cpu", precision="fp32"),
                               pia_reference(model, imgs, 200, 4.0), rtol=1e-4)


def test_loss_n_draws_averages_independent_noise_streams():
    model = smooth_model()
    imgs = images(3, channels=3, size=16)
    three = score(model, imgs, method="loss", seed=1, n_draws=3, t=300, device="cpu", precision="fp32")
    per_draw = []
    for draw in range(3):
        # Draw d uses Philox stream d for the same (seed, sample index) keys.
        eps = philox_normal_reference(tuple(imgs.shape), 1, offset=0, stream=draw).to(torch.float32)
        x0 = as_model_input(imgs, torch.float32)
        abar = abar_table()[300]
        x_t = abar.sqrt().float() * x0 + (1 - abar).sqrt().float() * eps
        with torch.no_grad():
            pred = model(x_t, torch.full((3,), 300, dtype=torch.long))
        per_draw.append(((pred - eps) ** 2).flatten(1).sum(1).double().numpy())
    np.testing.assert_allclose(three, np.mean(per_draw, axis=0), rtol=1e-5)
    assert not np.allclose(per_draw[0], per_draw[1])
    assert Scorer(model, "loss", n_draws=3, device="cpu").config.unet_calls == 3


@pytest.mark.parametrize("p", [4.0, 2.0, 1.0])
def test_pia_matches_reference(p):
    model = smooth_model()
    imgs = images(5, channels=3, size=16)
    expected = pia_reference(model, imgs, t=200, p=p)
    scorer = Scorer(model, "pia", t=200, p=p, unet_batch=5, device="cpu", precision="fp32")
    model.image_evals = 0
    got = scorer.score(imgs)
    assert model.image_evals == 10
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_float_images_equal_uint8_images():
    model = tiny_model()
    imgs = images(4)
    as_uint8 = score(model, imgs, device="cpu", t_sec=20, k=10)
    as_float = score(model, imgs.astype(np.float32) / 255.0, device="cpu", t_sec=20, k=10)
    as_tensor = score(model, torch.from_numpy(imgs), device="cpu", t_sec=20, k=10)
    np.testing.assert_allclose(as_float, as_uint8, rtol=1e-6)
    np.testing.assert_array_equal(as_tensor, as_uint8)


def test_streaming_yields_batches_in_order_with_global_offsets():
    model = tiny_model()
    imgs = images(10)
    scorer = Scorer(model, "secmi", t_sec=20, k=10, batch_size=4, unet_batch=2, device="cpu")
    starts = []
    parts = []
    for start, values in scorer.iter_scores(imgs, offset=100):
        starts.append(start)
        parts.append(values)
    assert starts == [100, 104, 108]
    np.testing.assert_array_equal(np.concatenate(parts), scorer.score(imgs))


def test_bf16_close_to_fp32():
    model = tiny_model()
    imgs = images(8)
    fp32 = score(model, imgs, t_sec=20, k=10, device="cpu", precision="fp32")
    bf16 = score(model, imgs, t_sec=20, k=10, device="cpu", precision="bf16")
    # bf16 keeps 8 bits of mantissa in the UNet; the trajectory itself stays float32.
    np.testing.assert_allclose(bf16, fp32, rtol=0.1)
    assert np.corrcoef(np.argsort(np.argsort(bf16)), np.argsort(np.argsort(fp32)))[0, 1] > 0.8


class _SharedLog(list):
    """A list that the scorer's resident-weight copies of a model share with the original."""

    def __deepcopy__(self, memo):
        return self


class AutocastRecorder(CountingModel):
    """Records, per UNet call, its timestep and whether it ran under CPU autocast (and in which dtype)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = _SharedLog()

    def forward(self, x, t):
        on = torch.is_autocast_enabled("cpu")
        self.calls.append((int(t[0]), torch.get_autocast_dtype("cpu") if on else None))
        return super().forward(x, t)


def test_mixed_precision_runs_the_inversion_in_bf16_and_the_round_trip_in_fp32():
    base = smooth_model()
    model = AutocastRecorder(base.net, base.schedule, base.image_shape, {"kind": "test"}, format="test").eval()
    imgs = images(5, channels=3, size=16)
    scorer = Scorer(model, "secmi", t_sec=50, k=10, device="cpu", precision="mixed")
    model.calls.clear()  # the run plan's calls while it was resolved
    got = scorer.score(imgs)
    assert model.calls == [(0, torch.bfloat16), (10, torch.bfloat16), (20, torch.bfloat16), (30, torch.bfloat16),
                           (40, None), (50, None)]

    # The same procedure written out step by step: autocast bf16 for 0 -> ... -> 40, fp32 after.
    x = as_model_input(imgs, torch.float32)
    with torch.no_grad():
        for t_c in range(0, 40, 10):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                x = ddim_singlestep(lambda v, t: base(v, t).float(), x, t_c, t_c + 10)
        x_up = ddim_singlestep(base, x, 40, 50)
        x_back = ddim_singlestep(base, x_up, 50, 40)
    expected = ((x_back - x) ** 2).flatten(1).sum(1).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # and it is not simply the fp32 or the bf16 score
    fp32 = score(base, imgs, method="secmi", t_sec=50, k=10, device="cpu", precision="fp32")
    bf16 = score(base, imgs, method="secmi", t_sec=50, k=10, device="cpu", precision="bf16")
    assert not np.allclose(got, bf16, rtol=1e-4) and not np.array_equal(got, fp32)


@pytest.mark.parametrize("method", ["loss", "pia"])
def test_mixed_precision_is_for_secmi_only(method):
    with pytest.raises(ConfigError, match="secmi method only"):
        Scorer(tiny_model(), method, precision="mixed", device="cpu")


@pytest.mark.parametrize(
    "bad,kwargs,match",
    [
        (lambda x: x.astype(np.float32) / 255.0 * 2.0, {}, "floats must lie in"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x / 255.0), {}, "NaN"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x / 255.0), {}, "NaN or Inf"),
        (lambda x: x.astype(np.int32), {}, "dtype"),
        (lambda x: x[:0], {}, "empty"),
        (lambda x: x[0], {}, "N x C x H x W"),
        (lambda x: np.repeat(x, 3, axis=1), {}, "channel"),
        (lambda x: x[:, :, :4, :4], {}, "pixels"),
        (lambda x: x, {"t_sec": 95, "k": 10}, "multiple of k"),
        (lambda x: x, {"k": 0}, "k = 0"),
        (lambda x: x, {"t_sec": 1000, "k": 10}, "outside"),
        (lambda x: x, {"method": "loss", "t": 1000}, "outside"),
        (lambda x: x, {"method": "pia", "t": -1}, "outside"),
        (lambda x: x, {"method": "nope"}, "unknown"),
        (lambda x: x, {"batch_size": 0}, "batch_size"),
        (lambda x: x, {"seed": -1}, "seed"),
        (lambda x: x, {"precision": "fp8"}, "precision"),
        (lambda x: x, {"method": "loss", "n_draws": 0}, "n_draws"),
        (lambda x: x, {"method": "pia", "p": 0.0}, "p = 0"),
    ],
)
def test_bad_inputs_raise_before_any_unet_call(bad, kwargs, match):
    model = tiny_model()
    data = bad(images(4))
    model.image_evals = 0
    with pytest.raises(QmiaError, match=match):
        score(model, data, device="cpu", **kwargs)
    assert model.image_evals == 0


def test_bad_device_is_a_config_error():
    with pytest.raises(ConfigError):
        score(tiny_model(), images(2), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            score(tiny_model(), images(2), device="cuda")


def test_non_model_is_an_input_error():
    with pytest.raises(InputError, match="model"):
        score(lambda x, t: x, images(2))


def test_public_api_names():
    assert qmia_fast.score is score
    assert qmia_fast.Scorer is Scorer


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_cuda_matches_cpu_and_graphs_match_eager(method):
    model = tiny_model(channels=3)
    imgs = images(6, channels=3)
    kwargs = dict(method=method, t_sec=30, k=10, seed=5, batch_size=3)
    cpu = score(model, imgs, device="cpu", **kwargs)
    eager = score(model, imgs, device="cuda", cuda_graphs=False, **kwargs)
    graphed = score(model, imgs, device="cuda", cuda_graphs=True, **kwargs)
    np.testing.assert_allclose(eager, cpu, rtol=1e-4)
    np.testing.assert_array_equal(graphed, eager)
