"""Tests of train-target's diffusers families: folders diffusers loads back, bit-exact resume, CFG drop rate, flow loss, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from qmia_fast.errors import ConfigError, InputError  # noqa: E402
from qmia_fast.training import CHECKPOINT_NAME, SUMMARY_NAME, train_diffusers_target  # noqa: E402
from qmia_fast.training.objectives import DenoiserObjective, drop_condition, flow_matching_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

UNET = dict(ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0)
VAE = dict(vae_ch=[8, 16], latent_channels=2, steps=3, batch_size=4, warmup=1)
DIT = dict(layers=1, heads=2, head_dim=8, patch_size=2)
TEXT = dict(dim=32, layers=2, heads=4, max_length=16)
FAST = dict(steps=3, batch_size=4, warmup=1, save_every=2, device="cpu", unet=UNET, T=40)
CAPTIONS = ["a photo of a bag", "a coat", "a picture of a bag", "a dress", "a photo of a coat", "a bag"]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(6, 1, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def labels():
    return np.array([0, 1, 2, 0, 1, 2])


@pytest.fixture(scope="module")
def vae_images():
    return np.random.default_rng(1).integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def latent_target(tmp_path_factory, images, vae_images):
    out = tmp_path_factory.mktemp("latent") / "run"
    summary = train_diffusers_target(images, out, latent=True, vae_images=vae_images, vae=VAE, **FAST)
    return out, summary


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_class_conditional_folder_loads_in_diffusers(images, labels, tmp_path):
    out = tmp_path / "run"
    summary = train_diffusers_target(images, out, condition="class", labels=labels, class_names=["a", "b", "c"],
                                     **FAST)
    assert _files(out) == sorted([CHECKPOINT_NAME, SUMMARY_NAME, "conditioning.json", "model_index.json",
                                  "scheduler/scheduler_config.json", "unet/config.json",
                                  "unet/diffusion_pytorch_model.safetensors"])
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet")
    assert unet.config.num_class_embeds == 4 and unet.config.sample_size == 8 and unet.config.in_channels == 1
    assert json.loads((out / "conditioning.json").read_text()) == {
        "kind": "class", "num_classes": 3, "null_label": 3, "class_names": ["a", "b", "c"], "cfg_dropout": 0.1}
    scheduler = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.num_train_timesteps == 40 and scheduler.config.beta_schedule == "linear"
    pipeline = diffusers.DiffusionPipeline.from_pretrained(out)
    assert type(pipeline).__name__ == "DDPMPipeline"
    # The exported weights are the checkpoint's EMA weights.
    ema = torch.load(out / CHECKPOINT_NAME, weights_only=True)["ema"]
    for key, value in unet.state_dict().items():
        assert torch.equal(value, ema[key]), key
    assert summary["members_used"] == 6 and summary["parameters"] == sum(p.numel() for p in unet.parameters())
    with torch.no_grad():
        assert unet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 39]), class_labels=torch.tensor([0, 3])).sample.shape \
            == (2, 1, 8, 8)


def test_flow_folder_has_a_flow_match_scheduler(images, labels, tmp_path):
    out = tmp_path / "run"
    summary = train_diffusers_target(images, out, objective="flow", condition="class", labels=labels,
                                     flow_timesteps="logit-normal", **{**FAST, "T": 1000})
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.shift == 1.0
    assert json.loads((out / "model_index.json").read_text())["scheduler"] == ["diffusers",
                                                                             "FlowMatchEulerDiscreteScheduler"]
    assert summary["objective"] == "flow" and summary["flow_timesteps"] == "logit-normal"
    assert diffusers.UNet2DModel.from_pretrained(out / "unet").config.num_class_embeds == 4


def test_latent_folder_vae_scaling_and_unet(latent_target, vae_images):
    out, summary = latent_target
    assert {"vqvae/config.json", "vqvae/diffusion_pytorch_model.safetensors", "unet/config.json",
            "scheduler/scheduler_config.json", "model_index.json", "vae_checkpoint.pt"} <= set(_files(out))
    assert json.loads((out / "model_index.json").read_text())["vqvae"] == ["diffusers", "AutoencoderKL"]
    vae = diffusers.AutoencoderKL.from_pretrained(out / "vqvae").eval()
    with torch.no_grad():
        means = vae.encode(torch.from_numpy(vae_images).float() / 127.5 - 1).latent_dist.mean
    assert vae.config.scaling_factor == pytest.approx(1.0 / float(means.flatten().std()), rel=1e-5)
    assert summary["vae"]["scaling_factor"] == vae.config.scaling_factor
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet")
    assert unet.config.in_channels == 2 and unet.config.sample_size == 4 and unet.config.num_class_embeds is None
    assert summary["input_shape"] == [2, 4, 4] and summary["vae"]["images"] == 10
    assert diffusers.DDPMScheduler.from_pretrained(out / "scheduler").config.clip_sample is False


def test_dit_reuses_the_vae_and_loads_as_dit_pipeline(latent_target, images, labels, tmp_path):
    out = tmp_path / "dit"
    train_diffusers_target(images, out, latent=True, denoiser="dit", labels=labels, class_names=["x", "y", "z"],
                           vae_from=latent_target[0], dit=DIT, **FAST)
    assert not (out / "vae_checkpoint.pt").exists()
    pipeline = diffusers.DiTPipeline.from_pretrained(out)
    assert pipeline.labels == {"x": 0, "y": 1, "z": 2}
    assert pipeline.transformer.config.num_embeds_ada_norm == 3 and pipeline.transformer.config.sample_size == 4
    original = diffusers.AutoencoderKL.from_pretrained(latent_target[0] / "vqvae")
    for key, value in pipeline.vae.state_dict().items():
        assert torch.equal(value, original.state_dict()[key])
    assert pipeline.vae.config.scaling_factor == original.config.scaling_factor
    assert json.loads((out / "conditioning.json").read_text())["null_label"] == 3


def test_text_folder_loads_as_stable_diffusion(images, vae_images, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "run"
    summary = train_diffusers_target(images, out, text=True, captions=CAPTIONS, vae_images=vae_images, vae=VAE,
                                     text_encoder=TEXT, **FAST)
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt", "text_encoder/config.json", "vae/config.json",
            "unet/config.json"} <= set(_files(out))
    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert pipeline.unet.config.cross_attention_dim == 32 and pipeline.tokenizer.model_max_length == 16
    tokenizer = transformers.CLIPTokenizer.from_pretrained(out / "tokenizer")
    for word in ("photo", "coat", "picture", "dress", "bag"):
        assert len(tokenizer(word)["input_ids"]) == 3, word  # start, the word as one token, end
    # Frozen: the saved encoder is its seeded init.
    from qmia_fast.training.text_encoder import build_text_encoder

    fresh = build_text_encoder(summary["text_encoder"]["config"], seed=0)
    for key, value in pipeline.text_encoder.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert json.loads((out / "conditioning.json").read_text())["kind"] == "text"


@pytest.mark.parametrize("stop_stage,stop_step", [("denoiser", 2), ("vae", 2)])
def test_interrupted_latent_run_resumes_bit_exactly(images, labels, vae_images, tmp_path, stop_stage, stop_step):
    kw = dict(latent=True, vae_images=vae_images, vae={**VAE, "steps": 4}, condition="class", labels=labels,
              **{**FAST, "steps": 4, "save_every": 1})
    straight = train_diffusers_target(images, tmp_path / "straight", **kw)

    class Interrupt(Exception):
        pass

    def stop(step, total, loss, stage):
        if stage == stop_stage and step == stop_step + 1:
            raise Interrupt  # step stop_step + 1 is lost, stop_step is on disk

    with pytest.raises(Interrupt):
        train_diffusers_target(images, tmp_path / "resumed", progress=stop, **kw)
    seen = []
    resumed = train_diffusers_target(images, tmp_path / "resumed", progress=lambda *a: seen.append((a[3], a[0])),
                                     **kw)
    first = [step for stage, step in seen if stage == stop_stage][0]
    assert first == stop_step + 1
    assert resumed["final_loss"] == straight["final_loss"]
    for name in (CHECKPOINT_NAME, "vae_checkpoint.pt"):
        a = torch.load(tmp_path / "straight" / name, weights_only=True)
        b = torch.load(tmp_path / "resumed" / name, weights_only=True)
        for part in ("net", "ema"):
            for key in a[part]:
                assert torch.equal(a[part][key], b[part][key]), (name, part, key)


def test_resume_refuses_other_settings(images, labels, tmp_path):
    train_diffusers_target(images, tmp_path / "run", condition="class", labels=labels, **FAST)
    with pytest.raises(ConfigError, match="different configuration.*cfg_dropout"):
        train_diffusers_target(images, tmp_path / "run", condition="class", labels=labels, cfg_dropout=0.2, **FAST)
    with pytest.raises(ConfigError, match="different configuration.*labels"):
        train_diffusers_target(images, tmp_path / "run", condition="class", labels=labels[::-1].copy(), **FAST)


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_class_mode_drops_the_null_class_at_the_set_rate(images, labels, tmp_path, rate):
    seen = []
    original = diffusers.UNet2DModel.forward

    def spy(self, sample, timestep, class_labels=None, **kwargs):
        if self.training:
            seen.append(class_labels.clone())
        return original(self, sample, timestep, class_labels=class_labels, **kwargs)

    diffusers.UNet2DModel.forward = spy
    try:
        train_diffusers_target(images, tmp_path / "run", condition="class", labels=labels, cfg_dropout=rate,
                               **{**FAST, "steps": 25, "batch_size": 8, "save_every": 100})
    finally:
        diffusers.UNet2DModel.forward = original
    drawn = torch.cat(seen)
    assert len(drawn) == 200 and set(drawn.tolist()) <= {0, 1, 2, 3}
    nulls = int((drawn == 3).sum())
    if rate in (0.0, 1.0):
        assert nulls == 200 * rate
    else:  # Binomial(200, 0.3): mean 60, sd 6.5
        assert 35 <= nulls <= 85, nulls
    # Each step's 8 rows are 8 members (the sampler's epochs), labelled by their own class unless dropped.
    assert (drawn[drawn != 3] < 3).all()


def test_drop_condition_rate_on_many_draws():
    drop = drop_condition(100_000, 0.1, torch.Generator().manual_seed(0), "cpu")
    assert drop.dtype == torch.bool and abs(float(drop.float().mean()) - 0.1) < 0.005


def test_flow_loss_equals_a_hand_written_reference():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    x0, eps = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    s = torch.tensor([0.0, 0.25, 0.5, 0.9])
    seen_t = []

    def predict(x, t, cond):
        seen_t.append(t)
        return net(x) * (1 + t.view(-1, 1, 1, 1) / 1000)

    loss = flow_matching_loss(predict, x0, s, eps, None, T=1000)
    reference = 0.0
    with torch.no_grad():
        loss = loss.detach()
        for i in range(4):
            x_s = (1 - float(s[i])) * x0[i:i + 1] + float(s[i]) * eps[i:i + 1]
            v = net(x_s) * (1 + float(s[i]))
            reference += float(((v - (eps[i:i + 1] - x0[i:i + 1])) ** 2).sum())
    assert float(loss) == pytest.approx(reference / x0.numel(), rel=1e-6)
    assert torch.equal(seen_t[0], s * 1000)
    # An oracle that knows the velocity has zero loss; predicting zero costs mean (eps - x0)^2.
    assert float(flow_matching_loss(lambda x, t, c: eps - x0, x0, s, eps, None)) == 0.0
    zero = float(flow_matching_loss(lambda x, t, c: torch.zeros_like(x), x0, s, eps, None))
    assert zero == pytest.approx(float(((eps - x0) ** 2).mean()), rel=1e-6)


def test_flow_objective_draws_s_then_noise_from_the_generator():
    x0 = torch.randn(3, 1, 4, 4)
    objective = DenoiserObjective("flow", None, 1000, "uniform")
    predict = lambda x, t, c: x * 0.5 + t.view(-1, 1, 1, 1) / 1000  # noqa: E731
    loss = objective(predict, x0, None, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    s = torch.rand(3, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps
    reference = ((x_s * 0.5 + s.view(-1, 1, 1, 1) - (eps - x0)) ** 2).mean()
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)
    logit = DenoiserObjective("flow", None, 1000, "logit-normal")
    seen = []
    logit(lambda x, t, c: seen.append(t) or x, x0, None, torch.Generator().manual_seed(7))
    assert torch.allclose(seen[0], torch.sigmoid(torch.randn(3, generator=torch.Generator().manual_seed(7))) * 1000)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(condition="class"), ConfigError, "--condition class needs one label per member"),
    (dict(text=True, vae_images="V"), ConfigError, "--text needs one caption per member"),
    (dict(latent=True), ConfigError, "--latent needs non-member images"),
    (dict(denoiser="dit", labels="L"), ConfigError, "add --latent"),
    (dict(text=True, condition="class", labels="L"), ConfigError, "two different conditions"),
    (dict(cfg_dropout=1.5, condition="class", labels="L"), ConfigError, "--cfg-dropout"),
    (dict(objective="score"), ConfigError, "--objective"),
    (dict(latent=True, vae_images="V", vae={**VAE, "vae_ch": [8, 16, 16, 16, 16]}), ConfigError,
     "--vae-ch: 5 levels down-sample"),
    (dict(latent=True, vae_images="V", unet={**UNET, "ch_mult": [1, 2, 2, 2]}), ConfigError,
     "--ch-mult: 4 levels down-sample the latent"),
    (dict(latent=True, vae_images="MEMBERS"), ConfigError, "equal member images"),
    (dict(condition="class", labels=np.array([0, 1])), InputError, "--labels must be 6 integers"),
    (dict(latent=True, denoiser="dit", labels="L", vae_images="V", dit={**DIT, "patch_size": 3}), ConfigError,
     "--patch-size 3"),
])
def test_bad_options_fail_before_any_work(images, labels, vae_images, tmp_path, kwargs, error, match):
    swap = {"V": vae_images, "L": labels, "MEMBERS": np.concatenate([vae_images, images[:1]])}
    kwargs = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        train_diffusers_target(images, tmp_path / "run", **{**FAST, **kwargs})
    assert not (tmp_path / "run").exists()
