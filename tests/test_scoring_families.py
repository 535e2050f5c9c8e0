"""Conditional, latent, text-conditioned and flow-matching models: every score equals a plain-torch loop of its definition, bits stay batch-invariant."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from qmia_fast.errors import ConfigError, InputError
from qmia_fast.kernels.reference import philox_normal_reference
from qmia_fast.models import Conditioning, EpsModel
from qmia_fast.schedule import FlowSchedule, linear_schedule
from qmia_fast.scoring import Scorer

C, S, K = 2, 8, 3  # channels, image side, classes


class ClassNet(nn.Module):
    """eps = conv(x) * (1 + t / T) + embedding(label): a condition that visibly moves every prediction."""

    def __init__(self, classes: int = K + 1, channels: int = C, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.embed = nn.Embedding(classes, channels)

    def forward(self, x, t, y=None):
        out = self.conv(x) * (1.0 + t.float().view(-1, 1, 1, 1) / 1000.0)
        if y is not None:
            out = out + self.embed(y).view(-1, x.shape[1], 1, 1)
        return out


class TextEncoder(nn.Module):
    """Captions -> [n, 4, C] hidden states from a hash of the words; counts captions over 5 words as truncated."""

    null_caption = ""

    def encode(self, captions):
        rows = []
        for caption in captions:
            seed = int.from_bytes(hashlib.sha256(" ".join(caption.split()[:5]).encode()).digest()[:4], "little")
            rows.append(torch.randn(4, C, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows), sum(len(c.split()) > 5 for c in captions)


class TextNet(ClassNet):
    def forward(self, x, t, hidden=None):
        out = self.conv(x) * (1.0 + t.float().view(-1, 1, 1, 1) / 1000.0)
        return out + hidden.mean(dim=1).view(-1, x.shape[1], 1, 1)


class PoolVAE(nn.Module):
    """A 'VAE' whose posterior mean is a 2x2 average pool and 1x1 convolution, times a scaling factor."""

    def __init__(self, scaling_factor: float = 0.7):
        super().__init__()
        torch.manual_seed(3)
        self.proj = nn.Conv2d(1, C, 1)
        self.scaling_factor = scaling_factor

    def encode(self, x):
        return self.proj(nn.functional.avg_pool2d(x, 2)) * self.scaling_factor


def class_model(null_label=K):
    return EpsModel(ClassNet(), linear_schedule(), (C, S, S), {"kind": "test"}, format="test",
                    conditioning=Conditioning("class", num_classes=K, null_label=null_label)).eval()


def images(n, channels=C, size=S, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def to_range(imgs):
    return torch.from_numpy(imgs).float() / 255.0 * 2.0 - 1.0


# --- plain-torch definitions (DESIGN.md section 2), with x0 the model's input and cond passed to every call

def secmi_loop(pred, x0, schedule, t_sec=30, k=10):
    def step(x, t_c, t_n):
        c1, c2 = schedule.step_coefficients(t_c, t_n)
        return c1 * x + c2 * pred(x, t_c)

    x = x0
    for t_c in range(0, t_sec - k, k):
        x = step(x, t_c, t_c + k)
    x_up = step(x, t_sec - k, t_sec)
    back = step(x_up, t_sec, t_sec - k)
    return ((back - x) ** 2).flatten(1).sum(1).double().numpy()


def loss_loop(pred, x0, schedule, t=200, seed=0, ids=None, flow=False):
    ids = np.arange(len(x0)) if ids is None else ids
    eps = torch.stack([philox_normal_reference((1, *x0.shape[1:]), seed, offset=int(i))[0] for i in ids]).float()
    if flow:
        s = t / schedule.T
        x_t = (1 - s) * x0 + s * eps
        target = eps - x0
    else:
        x_t = schedule.sqrt_abar_at(t) * x0 + schedule.sqrt_one_minus_abar_at(t) * eps
        target = eps
    return ((pred(x_t, t) - target) ** 2).flatten(1).sum(1).double().numpy()


def pia_loop(pred, x0, schedule, t=200, p=4.0, flow=False):
    noise = pred(x0, 0)
    if flow:
        x_t = x0 + (t / schedule.T) * noise
    else:
        x_t = schedule.sqrt_abar_at(t) * x0 + schedule.sqrt_one_minus_abar_at(t) * noise
    return ((pred(x_t, t) - noise).abs() ** p).flatten(1).sum(1).double().numpy()


def conditioned(model, cond):
    def pred(x, t):
        with torch.no_grad():
            return model(x, torch.full((x.shape[0],), t, dtype=torch.long), cond)
    return pred


# --- class-conditional

@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_class_conditional_scores_use_each_images_own_label(method):
    model = class_model()
    imgs, labels = images(6), np.array([0, 2, 1, 1, 0, 2])
    x0, y = to_range(imgs), torch.from_numpy(labels)
    reference = {"secmi": lambda: secmi_loop(conditioned(model, y), x0, model.schedule),
                 "loss": lambda: loss_loop(conditioned(model, y), x0, model.schedule),
                 "pia": lambda: pia_loop(conditioned(model, y), x0, model.schedule)}[method]()
    scorer = Scorer(model, method, t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=4)
    got = scorer.score(imgs, conditions=labels)
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    # The label matters: another label gives other scores.
    assert not np.allclose(scorer.score(imgs, conditions=(labels + 1) % K), got, rtol=1e-3)


def test_null_condition_scores_every_image_under_the_null_class():
    model = class_model()
    imgs = images(5)
    null = torch.full((5,), K, dtype=torch.long)
    got = Scorer(model, "loss", device="cpu", precision="fp32", condition="null").score(imgs)
    np.testing.assert_allclose(got, loss_loop(conditioned(model, null), to_range(imgs), model.schedule), rtol=1e-5)


def test_conditions_are_part_of_each_samples_bits_at_any_batch_size():
    model = class_model()
    imgs, labels = images(13), np.arange(13) % K
    whole = Scorer(model, "secmi", t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=4).score(
        imgs, conditions=labels)
    for batch in (1, 3, 8):
        scorer = Scorer(model, "secmi", t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=4,
                        batch_size=batch)
        np.testing.assert_array_equal(scorer.score(imgs, conditions=labels), whole)
    picked = np.array([12, 3, 7])
    subset = Scorer(model, "secmi", t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=4).score(
        imgs[picked], indices=picked, conditions=labels[picked])
    np.testing.assert_array_equal(subset, whole[picked])


@pytest.mark.parametrize("conditions,match", [
    (None, "class-conditional: pass conditions"),
    (np.array([0, 1, 3, 0]), "outside the model's classes"),
    (np.array([0, 1, -1, 0]), "outside the model's classes"),
    (np.array([0, 1, 2]), "one class label per image"),
    (np.array([0.0, 1.0, 2.0, 0.0]), "integers"),
])
def test_bad_labels_are_one_line_errors_before_any_call(conditions, match):
    with pytest.raises(InputError, match=match):
        Scorer(class_model(), "loss", device="cpu", precision="fp32").score(images(4), conditions=conditions)


def test_null_condition_needs_a_null_class_and_unconditional_models_take_none():
    with pytest.raises(ConfigError, match="null class"):
        Scorer(class_model(null_label=None), "loss", device="cpu", precision="fp32", condition="null")
    plain = EpsModel(ClassNet(), linear_schedule(), (C, S, S), {"kind": "test"}, format="test")
    with pytest.raises(InputError, match="unconditional"):
        Scorer(plain, "loss", device="cpu", precision="fp32").score(images(2), conditions=np.array([0, 1]))


# --- text-conditioned

def text_model():
    return EpsModel(TextNet(), linear_schedule(), (C, S, S), {"kind": "test"}, format="test",
                    conditioning=Conditioning("text"), text_encoder=TextEncoder()).eval()


def test_captions_condition_every_call_and_the_empty_prompt_is_the_null_condition():
    model = text_model()
    imgs = images(5)
    captions = ["a shoe", "a bag", "a shoe", "a very long caption with far too many words", ""]
    hidden, truncated = model.text_encoder.encode(captions)
    scorer = Scorer(model, "secmi", t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=2)
    np.testing.assert_allclose(scorer.score(imgs, conditions=captions),
                               secmi_loop(conditioned(model, hidden), to_range(imgs), model.schedule), rtol=1e-5)
    assert scorer.truncated_captions == truncated == 1  # each distinct caption encoded once
    empty, _ = model.text_encoder.encode([""] * 5)
    null = Scorer(model, "loss", device="cpu", precision="fp32", condition="null").score(imgs)
    np.testing.assert_allclose(null, loss_loop(conditioned(model, empty), to_range(imgs), model.schedule), rtol=1e-5)
    with pytest.raises(InputError, match="captions"):
        scorer.score(imgs, conditions=captions[:4])


# --- latent

def latent_model(process="ddpm"):
    schedule = FlowSchedule() if process == "flow" else linear_schedule()
    return EpsModel(ClassNet(channels=C), schedule, (1, S, S), {"kind": "test"}, format="test",
                    prediction_type="flow" if process == "flow" else "epsilon", latent=PoolVAE(),
                    input_shape=(C, S // 2, S // 2)).eval()


@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_latent_models_score_the_vae_posterior_mean_times_its_scaling_factor(method):
    model = latent_model()
    imgs = images(5, channels=1)
    with torch.no_grad():
        z0 = model.latent.encode(to_range(imgs))
    pred = conditioned(model, None)
    reference = {"secmi": lambda: secmi_loop(pred, z0, model.schedule), "loss": lambda: loss_loop(pred, z0, model.schedule),
                 "pia": lambda: pia_loop(pred, z0, model.schedule)}[method]()
    scorer = Scorer(model, method, t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=2)
    np.testing.assert_allclose(scorer.score(imgs), reference, rtol=1e-5)
    latents = scorer.encode(imgs)
    np.testing.assert_allclose(latents, z0.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(scorer.score(latents, inputs="latents"), scorer.score(imgs))
    with pytest.raises(InputError, match="latents have shape"):
        scorer.score(imgs.astype(np.float32), inputs="latents")


# --- flow matching

@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
@pytest.mark.parametrize("latent", [False, True])
def test_flow_matching_scores_follow_their_flow_definitions(method, latent):
    if latent:
        model = latent_model("flow")
        imgs = images(4, channels=1)
        with torch.no_grad():
            x0 = model.latent.encode(to_range(imgs))
    else:
        model = EpsModel(ClassNet(), FlowSchedule(), (C, S, S), {"kind": "test"}, format="test",
                         prediction_type="flow").eval()
        imgs = images(4)
        x0 = to_range(imgs)
    pred = conditioned(model, None)
    reference = {"secmi": lambda: secmi_loop(pred, x0, model.schedule),
                 "loss": lambda: loss_loop(pred, x0, model.schedule, flow=True),
                 "pia": lambda: pia_loop(pred, x0, model.schedule, flow=True)}[method]()
    got = Scorer(model, method, t_sec=30, k=10, device="cpu", precision="fp32").score(imgs)
    np.testing.assert_allclose(got, reference, rtol=1e-5)


def test_flow_secmi_steps_are_euler_steps_of_the_velocity():
    schedule = FlowSchedule()
    assert schedule.step_coefficients(20, 30) == (1.0, pytest.approx(0.01))
    assert schedule.step_coefficients(30, 20) == (1.0, pytest.approx(-0.01))
    assert schedule.noise_coefficients(250) == (0.75, 0.25)
    with pytest.raises(InputError, match="flow"):
        EpsModel(ClassNet(), schedule, (C, S, S), {}, format="test")  # a flow schedule needs prediction 'flow'
