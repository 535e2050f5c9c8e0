"""Each family loaded from a diffusers folder scores as a plain-diffusers loop does: the modules' own calls, the scheduler's own tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qmia_fast as qf
from qmia_fast.kernels.reference import philox_normal_reference

import diffusers_builders as build

diffusers = pytest.importorskip("diffusers")


def pixels(n, channels=3, size=8, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


def to_range(imgs):
    return torch.from_numpy(imgs).float() / 255.0 * 2.0 - 1.0


def noise(shape, ids, seed=0):
    return torch.stack([philox_normal_reference((1, *shape), seed, offset=int(i))[0] for i in ids]).float()


class DDPMLoop:
    """SecMI / loss / PIA written with a scheduler's alphas_cumprod and a prediction function eps(x, t)."""

    def __init__(self, abar, eps):
        self.abar, self.eps = torch.as_tensor(np.asarray(abar), dtype=torch.float64), eps

    def _step(self, x, t_c, t_n):
        a_c, a_n = self.abar[t_c], self.abar[t_n]
        e = self.eps(x, t_c)
        x0 = (x - (1 - a_c).sqrt().float() * e) / a_c.sqrt().float()
        return a_n.sqrt().float() * x0 + (1 - a_n).sqrt().float() * e

    def secmi(self, x0, t_sec=30, k=10):
        x = x0
        for t_c in range(0, t_sec - k, k):
            x = self._step(x, t_c, t_c + k)
        back = self._step(self._step(x, t_sec - k, t_sec), t_sec, t_sec - k)
        return ((back - x) ** 2).flatten(1).sum(1).double().numpy()

    def loss(self, x0, t=200, seed=0):
        e = noise(x0.shape[1:], range(len(x0)), seed)
        x_t = self.abar[t].sqrt().float() * x0 + (1 - self.abar[t]).sqrt().float() * e
        return ((self.eps(x_t, t) - e) ** 2).flatten(1).sum(1).double().numpy()


class FlowLoop:
    """The same with Euler steps of the velocity v(x, s) at s = t / T, the model called at timestep t."""

    def __init__(self, T, v):
        self.T, self.v = T, v

    def secmi(self, x0, t_sec=30, k=10):
        def step(x, t_c, t_n):
            return x + (t_n - t_c) / self.T * self.v(x, t_c)

        x = x0
        for t_c in range(0, t_sec - k, k):
            x = step(x, t_c, t_c + k)
        back = step(step(x, t_sec - k, t_sec), t_sec, t_sec - k)
        return ((back - x) ** 2).flatten(1).sum(1).double().numpy()

    def loss(self, x0, t=200, seed=0):
        e = noise(x0.shape[1:], range(len(x0)), seed)
        s = t / self.T
        return ((self.v((1 - s) * x0 + s * e, t) - (e - x0)) ** 2).flatten(1).sum(1).double().numpy()

    def pia(self, x0, t=200, p=4.0):
        v0 = self.v(x0, 0)
        x_t = x0 + (t / self.T) * v0
        return ((self.v(x_t, t) - v0).abs() ** p).flatten(1).sum(1).double().numpy()


def call(module, **kwargs):
    def pred(x, t):
        with torch.no_grad():
            return module(x, torch.full((x.shape[0],), t, dtype=torch.long), **kwargs).sample
    return pred


def scores(folder, imgs, method, **kwargs):
    """The scores in the layout the plain loops run (torch's NCHW convolutions), checked to 1e-4 against them; and
    in the layout the run plan measured fastest here, which must agree with those to the rounding SecMI amplifies.

    The plan's choice depends on timings (Winograd layers or NHWC memory round each call differently by ~1e-6),
    and SecMI's t-error, a small difference of two reconstructions, magnifies that: 1.1e-4 relative on the flow
    model with the Winograd layers, against 7e-6 in the plain layout.
    """
    model = qf.load_model(folder)
    condition = kwargs.pop("condition", "own")

    def run(**layout):
        return qf.Scorer(model, method, t_sec=30, k=10, device="cpu", precision="fp32", unet_batch=4,
                         condition=condition, **layout).score(imgs, **kwargs)

    plain = run(channels_last=False, fast_layers=False)
    np.testing.assert_allclose(run(), plain, rtol=1e-3)
    return plain


@pytest.mark.parametrize("method", ["secmi", "loss"])
def test_class_conditional_unet_with_its_own_labels_and_the_null_class(tmp_path, method):
    folder = build.build_class_unet(tmp_path / "m", num_classes=10)
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    abar = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
    imgs, labels = pixels(6), np.array([0, 3, 9, 3, 1, 0])
    x0 = to_range(imgs)
    own = getattr(DDPMLoop(abar, call(unet, class_labels=torch.from_numpy(labels))), method)(x0)
    np.testing.assert_allclose(scores(folder, imgs, method, conditions=labels), own, rtol=1e-4)
    null = getattr(DDPMLoop(abar, call(unet, class_labels=torch.full((6,), 10))), method)(x0)
    np.testing.assert_allclose(scores(folder, imgs, method, condition="null"), null, rtol=1e-4)


@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_flow_matching_unet_follows_the_velocity(tmp_path, method):
    folder = build.build_flow_unet(tmp_path / "m")
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    T = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler").config.num_train_timesteps
    imgs = pixels(5)
    expected = getattr(FlowLoop(T, call(unet)), method)(to_range(imgs))
    np.testing.assert_allclose(scores(folder, imgs, method), expected, rtol=1e-4)


@pytest.mark.parametrize("method", ["secmi", "loss"])
def test_latent_unet_scores_the_vae_posterior_mean_times_its_scaling_factor(tmp_path, method):
    folder = build.build_latent_unet(tmp_path / "m", vae="kl")
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    abar = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
    imgs = pixels(5, size=16)
    with torch.no_grad():
        z0 = vae.encode(to_range(imgs)).latent_dist.mean * vae.config.scaling_factor
    expected = getattr(DDPMLoop(abar, call(unet)), method)(z0)
    np.testing.assert_allclose(scores(folder, imgs, method), expected, rtol=1e-4)


@pytest.mark.parametrize("method", ["secmi", "loss"])
def test_dit_keeps_the_first_channels_of_its_learned_sigma_output(tmp_path, method):
    folder = build.build_dit(tmp_path / "m", num_classes=10)
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    dit = diffusers.DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    abar = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
    imgs, labels = pixels(4, size=16), np.array([2, 2, 7, 0])
    with torch.no_grad():
        z0 = vae.encode(to_range(imgs)).latent_dist.mean * vae.config.scaling_factor

    def eps(x, t):
        with torch.no_grad():
            out = dit(x, timestep=torch.full((x.shape[0],), t, dtype=torch.long),
                      class_labels=torch.from_numpy(labels)).sample
        return out[:, :x.shape[1]]

    expected = getattr(DDPMLoop(abar, eps), method)(z0)
    np.testing.assert_allclose(scores(folder, imgs, method, conditions=labels), expected, rtol=1e-4)


@pytest.mark.parametrize("method", ["secmi", "loss"])
def test_text_to_image_pipeline_with_each_images_caption_and_the_empty_prompt(tmp_path, method):
    transformers = pytest.importorskip("transformers")
    folder = build.build_text_to_image(tmp_path / "m")
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    abar = diffusers.PNDMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    imgs = pixels(4, size=16)
    captions = ["a red shoe", "a bag", "a red shoe", ""]

    def hidden(texts):
        return build.prompt_states(tokenizer, encoder, texts)

    with torch.no_grad():
        z0 = vae.encode(to_range(imgs)).latent_dist.mean * vae.config.scaling_factor
    own = getattr(DDPMLoop(abar, call(unet, encoder_hidden_states=hidden(captions))), method)(z0)
    np.testing.assert_allclose(scores(folder, imgs, method, conditions=captions), own, rtol=1e-4)
    empty = getattr(DDPMLoop(abar, call(unet, encoder_hidden_states=hidden([""] * 4))), method)(z0)
    np.testing.assert_allclose(scores(folder, imgs, method, condition="null"), empty, rtol=1e-4)
