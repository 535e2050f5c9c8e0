"""Tests of the diffusers model families: scheduler classes, class-conditional UNets, latent pipelines (KL and VQ), DiT, flow matching.

Every loaded model is compared with the diffusers module loaded by diffusers itself (from_pretrained
on the same folder) and called directly, in fp32. Same weights and the same operations give the
same bits, so pixel and latent predictions are compared exactly (atol = rtol = 0) unless noted.
"""
from __future__ import annotations

import json

import pytest
import torch

from qmia_fast.errors import InputError, ModelLoadError
from qmia_fast.models import Conditioning, EpsModel, detect_format, load_model
from qmia_fast.models.scheduler_kinds import resolve_scheduler
from qmia_fast.schedule import FlowSchedule, Schedule
from diffusers_builders import (
    build_class_unet, build_dit, build_flow_unet, build_latent_unet, build_pixel_unet, save_scheduler,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXACT = dict(rtol=0, atol=0)
T = torch.tensor([0, 17, 500, 999])


def _x(shape, seed=1, n=4):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _abar(model, t):
    return torch.tensor(model.schedule.abar, dtype=torch.float32)[t].view(-1, 1, 1, 1)


# ---------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("class_name", ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                                        "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                                        "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
                                        "DPMSolverMultistepScheduler",
                                        "UniPCMultistepScheduler", "DEISMultistepScheduler"])
def test_ddpm_family_schedulers_give_the_betas_schedule(class_name, tmp_path):
    scheduler = getattr(diffusers, class_name)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                               num_train_timesteps=500, prediction_type="v_prediction")
    scheduler.save_pretrained(tmp_path)
    settings = json.loads((tmp_path / "scheduler_config.json").read_text())
    resolved = resolve_scheduler(settings, "test")
    assert isinstance(resolved.schedule, Schedule) and resolved.schedule.T == 500
    assert resolved.class_name == class_name and resolved.prediction_type == "v_prediction"
    # diffusers computes abar in float32; we in float64.
    reference = scheduler.alphas_cumprod.double().numpy()
    assert abs(resolved.schedule.abar - reference).max() < 1e-6


@pytest.mark.parametrize("class_name", ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"])
def test_flow_matching_schedulers_give_a_flow_schedule(class_name, tmp_path):
    save_scheduler(tmp_path, class_name, num_train_timesteps=800, shift=2.5)
    resolved = resolve_scheduler(json.loads((tmp_path / "scheduler_config.json").read_text()), "test")
    assert resolved.schedule == FlowSchedule(800, 2.5) and resolved.prediction_type == "flow"


def test_dpm_solver_with_flow_sigmas_is_flow_matching():
    resolved = resolve_scheduler({"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True,
                                  "prediction_type": "flow_prediction", "flow_shift": 3.0}, "test")
    assert resolved.schedule == FlowSchedule(1000, 3.0) and resolved.prediction_type == "flow"


@pytest.mark.parametrize("class_name, needle", [
    ("ScoreSdeVeScheduler", "score-SDE"), ("KarrasVeScheduler", "Karras"),
    ("CMStochasticIterativeScheduler", "consistency"), ("LCMScheduler", "consistency"),
    ("EDMEulerScheduler", "EDM"), ("MyOwnScheduler", "not supported"),
])
def test_other_schedulers_are_refused_by_name(class_name, needle, tmp_path):
    with pytest.raises(ModelLoadError, match=needle) as info:
        resolve_scheduler({"_class_name": class_name}, "scheduler/scheduler_config.json")
    assert class_name in str(info.value) and "\n" not in str(info.value)
    # and through the loader, before any weights are read
    folder = build_pixel_unet(tmp_path / "pipe")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": class_name}))
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match=needle):
        load_model(folder)


@pytest.mark.parametrize("settings, needle", [
    ({"_class_name": "DDIMScheduler", "prediction_type": "flow"}, "prediction_type"),
    ({"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}, "continuous"),
    ({"_class_name": 3}, "_class_name"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": -1}, "shift"),
    ({"_class_name": "DDPMScheduler", "num_train_timesteps": 10**9}, "at most"),
])
def test_malformed_scheduler_settings(settings, needle):
    with pytest.raises(ModelLoadError, match=needle):
        resolve_scheduler(settings, "test")


def test_flow_matching_folder_no_longer_loads_as_a_ddpm(tmp_path):
    """Regression: a FlowMatchEuler pipeline used to load silently with the scheduler's betas-less config read as
    DDPM linear betas; now it is a flow model whose prediction is the network's velocity, untouched."""
    folder = build_flow_unet(tmp_path / "flow", shift=3.0)
    model = load_model(folder)
    assert model.process == "flow" and model.prediction_type == "flow"
    assert model.schedule == FlowSchedule(1000, 3.0) and model.config["scheduler"]["class"] == \
        "FlowMatchEulerDiscreteScheduler"
    net = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    x = _x((3, 8, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(x, T), net(x, T).sample, **EXACT)


# ---------------------------------------------------------------------- class-conditional UNet2DModel


@pytest.fixture(scope="module")
def class_pipeline(tmp_path_factory):
    folder = build_class_unet(tmp_path_factory.mktemp("class_unet"))
    return folder, diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()


def test_class_unet_with_conditioning_json(class_pipeline):
    folder, net = class_pipeline
    model = load_model(folder)
    assert isinstance(model, EpsModel) and model.image_shape == model.input_shape == (3, 8, 8)
    assert model.conditioning == Conditioning("class", num_classes=10, null_label=10,
                                              class_names=tuple(f"class {i}" for i in range(10)))
    assert model.config["conditioning"]["null_label"] == 10 and model.latent is None
    json.dumps(model.config)
    x, labels = _x((3, 8, 8)), torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, T, labels), net(x, T, class_labels=labels).sample, **EXACT)
        null = net(x, T, class_labels=torch.full((4,), 10)).sample
        torch.testing.assert_close(model(x, T), null, **EXACT)  # no condition: the null class
        assert not torch.equal(model(x, T, labels), null)


@pytest.mark.parametrize("labels, needle", [
    (torch.tensor([0, 1, 2, 11]), "class label 11"), (torch.tensor([-1, 0, 0, 0]), "class label -1"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "int64"), (torch.zeros(4, 1, dtype=torch.long), "int64"),
    (torch.zeros(3, dtype=torch.long), "3 rows for 4 images"),
])
def test_class_labels_are_checked(class_pipeline, labels, needle):
    model = load_model(class_pipeline[0])
    with pytest.raises(InputError, match=needle):
        model(_x((3, 8, 8)), T, labels)


def test_bare_class_unet_without_conditioning_json_takes_every_row_as_a_class(tmp_path):
    folder = build_class_unet(tmp_path / "bare", num_classes=10, conditioning_json=False, pipeline=False)
    assert detect_format(folder)[0] == "diffusers"
    model = load_model(folder)
    assert model.conditioning == Conditioning("class", num_classes=11, null_label=None)
    net = diffusers.UNet2DModel.from_pretrained(folder).eval()
    x, labels = _x((3, 8, 8)), torch.tensor([10, 0, 5, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x, T, labels), net(x, T, class_labels=labels).sample, **EXACT)
    with pytest.raises(InputError, match="no null class"):
        model(x, T)


def test_class_unet_v_prediction_is_converted(tmp_path):
    folder = build_class_unet(tmp_path / "v", prediction_type="v_prediction")
    model, net = load_model(folder), diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    x, labels = _x((3, 8, 8)), torch.tensor([1, 2, 3, 4])
    abar = _abar(model, T)
    with torch.no_grad():
        v = net(x, T, class_labels=labels).sample
        # float32 tables rounded from float64 on our side, float32 square roots on this one
        torch.testing.assert_close(model(x, T, labels), abar.sqrt() * v + (1 - abar).sqrt() * x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, needle", [
    ({"kind": "class", "num_classes": 20, "null_label": 20}, "20 classes do not fit .* 11 rows"),
    ({"kind": "class", "num_classes": 10, "null_label": 3}, "null_label = 3 must lie outside"),
    ({"kind": "class", "num_classes": 10, "null_label": 11}, "below the table's 11 rows"),
    ({"kind": "class", "num_classes": 10, "class_names": ["a"]}, "class_names must be a list of 10"),
    ({"kind": "class", "num_classes": 0}, "num_classes = 0"),
    ({"kind": "class", "num_classes": 10, "null_class": 10}, "unknown key"),
    ({"kind": "text"}, "says kind 'text'"),
    ({"kind": "labels"}, "must be \"class\" or \"text\""),
    ([1, 2], "must hold a JSON object"),
])
def test_conditioning_json_must_fit_the_weights(tmp_path, spec, needle):
    folder = build_class_unet(tmp_path / "c")
    (folder / "conditioning.json").write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match=needle):
        load_model(folder)


def test_conditioning_json_on_an_unconditional_model_is_refused(tmp_path):
    folder = build_pixel_unet(tmp_path / "u")
    (folder / "conditioning.json").write_text(json.dumps({"kind": "class", "num_classes": 10}))
    with pytest.raises(ModelLoadError, match="is unconditional"):
        load_model(folder)


def test_class_embedding_types(tmp_path):
    folder = build_class_unet(tmp_path / "id", conditioning_json=False)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "class_embed_type": "identity"}))
    with pytest.raises(ModelLoadError, match="class_embed_type = 'identity' takes embeddings"):
        load_model(folder)
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "num_class_embeds": 12}))
    with pytest.raises(ModelLoadError, match="shape mismatch for class_embedding.weight"):
        load_model(folder)


# ---------------------------------------------------------------------- latent pipelines


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_latent_unet_pipeline(tmp_path, kind):
    folder = build_latent_unet(tmp_path / kind, vae=kind)
    model = load_model(folder)
    role, cls = ("vae", diffusers.AutoencoderKL) if kind == "kl" else ("vqvae", diffusers.VQModel)
    vae = cls.from_pretrained(folder / role).eval()
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    channels = 4 if kind == "kl" else 3
    assert model.image_shape == (3, 16, 16) and model.input_shape == (channels, 8, 8)
    assert model.config["components"][role]["class"] == cls.__name__
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean if kind == "kl" else vae.encode(pixels).latents
        torch.testing.assert_close(model.latent.encode(pixels), z * vae.config.scaling_factor, **EXACT)
        zt = _x((channels, 8, 8))
        torch.testing.assert_close(model(zt, T), unet(zt, T).sample, **EXACT)
    assert vae.config.scaling_factor == (0.3 if kind == "kl" else 0.5)
    with pytest.raises(InputError, match="float tensor"):
        model.latent.encode(torch.zeros(3, 16, 16))


def test_latent_shape_must_be_what_the_denoiser_takes(tmp_path):
    folder = build_latent_unet(tmp_path / "mix", vae="vq")  # a 3-channel VQ latent space
    kl = build_latent_unet(tmp_path / "kl", vae="kl")       # a VAE with 4 latent channels
    (folder / "vqvae").rename(tmp_path / "old_vq")
    (kl / "vae").rename(folder / "vae")
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match=r"into 4 x 8 x 8 latents but the denoiser takes 3 x 8 x 8"):
        load_model(folder)


def test_vae_with_a_shift_factor(tmp_path):
    folder = build_latent_unet(tmp_path / "shift")
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "shift_factor": 0.25}))
    model, vae = load_model(folder), diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = (vae.encode(pixels).latent_dist.mean - 0.25) * 0.3
        torch.testing.assert_close(model.latent.encode(pixels), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- DiT


@pytest.mark.parametrize("legacy", [False, True])
def test_dit_pipeline(tmp_path, legacy):
    folder = build_dit(tmp_path / "dit", legacy_class=legacy)
    model = load_model(folder)
    cls = diffusers.Transformer2DModel if legacy else diffusers.DiTTransformer2DModel
    net = cls.from_pretrained(folder / "transformer").eval()
    assert model.image_shape == (3, 16, 16) and model.input_shape == (4, 8, 8)
    assert model.conditioning.num_classes == 10 and model.conditioning.null_label == 10
    assert model.conditioning.class_names == tuple(f"label {i}" for i in range(10))
    assert model.config["learned_variance"] and model.config["denoiser"]["class"] == cls.__name__
    z, labels = _x((4, 8, 8)), torch.tensor([0, 9, 4, 10])
    with torch.no_grad():
        # learned sigma: the first 4 of the 8 output channels are the prediction
        expected = net(z, timestep=T, class_labels=labels).sample[:, :4]
        torch.testing.assert_close(model(z, T, labels), expected, **EXACT)
        null = net(z, timestep=T, class_labels=torch.full((4,), 10)).sample[:, :4]
        torch.testing.assert_close(model(z, T), null, **EXACT)


def test_pixel_dit_folder_and_flow_dit(tmp_path):
    folder = build_dit(tmp_path / "pix", vae=False, id2label=False, learned_sigma=False, flow=True)
    model = load_model(folder)
    assert model.latent is None and model.image_shape == (4, 8, 8) and model.conditioning.class_names is None
    assert model.process == "flow" and model.schedule == FlowSchedule(1000, 1.0)
    net = diffusers.DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    z, labels = _x((4, 8, 8)), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        torch.testing.assert_close(model(z, T, labels), net(z, timestep=T, class_labels=labels).sample, **EXACT)
    # a transformer folder alone, with its scheduler config passed in
    alone = load_model(folder / "transformer", config=folder / "scheduler" / "scheduler_config.json")
    assert alone.process == "flow" and alone.conditioning.num_classes == 10


@pytest.mark.parametrize("change, needle", [
    ({"norm_type": "ada_norm_single"}, "is not a DiT"),
    ({"patch_size": None}, "is not a DiT"),
    ({"num_embeds_ada_norm": 0}, "num_embeds_ada_norm"),
    ({"num_layers": 10**6}, "ask for more layers"),
    ({"sample_size": 9}, "turns 4 x 9 x 9 inputs into 8 x 8 x 8 predictions"),
])
def test_dit_configs_that_are_refused(tmp_path, change, needle):
    folder = build_dit(tmp_path / "bad", legacy_class=True, vae=False)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, **change}))
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match=needle):
        load_model(folder)


def test_dit_id2label_must_name_every_class(tmp_path):
    folder = build_dit(tmp_path / "ids", vae=False)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {"0": "a", "1": "b"}
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="id2label names 2 ids but the model has 10 classes"):
        load_model(folder)


def test_sinusoidal_class_embedding_needs_conditioning_json(tmp_path):
    """class_embed_type 'timestep' embeds labels like timesteps: no table tells the class count."""
    from diffusers_builders import perturb

    folder = tmp_path / "sinusoidal"
    perturb(diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=32, class_embed_type="timestep")).save_pretrained(folder / "unet")
    save_scheduler(folder / "scheduler")
    with pytest.raises(ModelLoadError, match="does not tell how many classes .* write a conditioning.json"):
        load_model(folder)
    (folder / "conditioning.json").write_text(json.dumps({"kind": "class", "num_classes": 5, "null_label": 99}))
    model, net = load_model(folder), diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    assert model.conditioning == Conditioning("class", num_classes=5, null_label=99)
    x, labels = _x((3, 8, 8)), torch.tensor([0, 4, 99, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, T, labels), net(x, T, class_labels=labels).sample, **EXACT)
    with pytest.raises(InputError, match="class label 5"):
        model(x, T, torch.tensor([5, 0, 0, 0]))
