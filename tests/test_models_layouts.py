"""Tests of folder layouts that are refused (missing, doubled or unknown components), and of wrap_denoiser for denoisers of the user's own."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from qmia_fast.errors import InputError, ModelLoadError, QmiaError
from qmia_fast.models import Conditioning, EpsModel, load_model, wrap_denoiser
from qmia_fast.schedule import FlowSchedule, linear_schedule
from diffusers_builders import build_dit, build_latent_unet, build_pixel_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------- layouts


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    return build_latent_unet(tmp_path_factory.mktemp("layout") / "ldm")


def _copy(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize("damage, needle", [
    (lambda f: shutil.rmtree(f / "unet"), "no unet/ folder"),
    (lambda f: (shutil.rmtree(f / "unet"), (f / "model_index.json").unlink()), "no recognisable model files"),
    (lambda f: (f / "vae" / "config.json").unlink(), "vae/ of .* has no config.json"),
    (lambda f: (f / "unet" / "config.json").unlink(), "unet/ of .* has no config.json"),
    (lambda f: shutil.copytree(f / "vae", f / "vqvae"), "both vae/ and vqvae/"),
    (lambda f: shutil.copytree(f / "unet", f / "transformer"), "both unet/ and transformer/"),
    (lambda f: (f / "scheduler" / "scheduler_config.json").unlink(), "scheduler/ of .* has no scheduler_config.json"),
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "has no weights"),
    (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "has no weights"),
    (lambda f: (f / "vae" / "config.json").write_text("[1]"), "must hold a JSON object"),
    (lambda f: ((f / "unet" / "config.json").write_text(json.dumps({"_class_name": "SD3Transformer2DModel"})),
                (f / "model_index.json").unlink()), "the denoiser is a 'SD3Transformer2DModel'"),
    (lambda f: (f / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"})),
     "names unet a 'UNet2DModel' but unet/ holds a 'UNet2DConditionModel'"),
    (lambda f: (f / "model_index.json").write_text(json.dumps({"vqvae": ["diffusers", "VQModel"]})), "no vqvae/"),
    (lambda f: (f / "model_index.json").write_text("{"), "not valid JSON"),
    (lambda f: (f / "text_encoder_2").mkdir(), "text_encoder_2"),
    (lambda f: (f / "tokenizer").mkdir(), "has tokenizer/ but no text_encoder/"),
])
def test_broken_pipelines_are_refused_in_one_line(latent_folder, tmp_path, damage, needle):
    folder = _copy(latent_folder, tmp_path)
    damage(folder)
    with pytest.raises(ModelLoadError, match=needle) as info:
        load_model(folder)
    assert "\n" not in str(info.value) and len(str(info.value)) < 600


def test_vae_config_that_does_not_fit_its_weights(latent_folder, tmp_path):
    folder = _copy(latent_folder, tmp_path)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 3}))
    with pytest.raises(ModelLoadError, match="vae .*shape mismatch"):
        load_model(folder)
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "layers_per_block": 10**7}))
    with pytest.raises(ModelLoadError, match="ask for more layers"):
        load_model(folder)


def test_pipeline_components_move_with_the_model(latent_folder):
    model = load_model(latent_folder)
    model.to(torch.float64)  # .to() reaches the VAE: it is a submodule
    assert next(model.latent.parameters()).dtype == torch.float64
    z = model.latent.encode(torch.zeros(1, 3, 16, 16))
    assert z.dtype == torch.float32 and z.shape == (1, 4, 8, 8)


def test_a_bare_transformer_folder_without_class_name_is_refused(tmp_path):
    pytest.importorskip("diffusers")
    folder = build_dit(tmp_path / "dit", vae=False)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    del config["_class_name"]
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match="the denoiser is a None"):
        load_model(folder)


def test_info_command_still_works():
    from click.testing import CliRunner

    from qmia_fast.cli import cli

    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output


def test_cli_prints_a_model_error_as_one_line(latent_folder, tmp_path):
    from click.testing import CliRunner

    from qmia_fast.cli import cli

    folder = _copy(latent_folder, tmp_path)
    (folder / "vae" / "config.json").unlink()
    images = tmp_path / "images.npy"
    import numpy as np

    np.save(images, np.zeros((4, 3, 16, 16), dtype=np.uint8))
    result = CliRunner().invoke(cli, ["score", "--model", str(folder), "--data", str(images), "--out",
                                      str(tmp_path / "scores.npy")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no config.json" in lines[0] and "Traceback" not in result.output


# ---------------------------------------------------------------------- wrap_denoiser


class Labelled(nn.Module):
    """x -> conv(x) + label embedding + a timestep term: a denoiser(x, t, condition) of a user's own."""

    def __init__(self, channels=3, rows=11):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.label = nn.Embedding(rows, channels)

    def forward(self, x, t, condition):
        return self.conv(x) + self.label(condition)[:, :, None, None] + t.float().view(-1, 1, 1, 1) / 1000


class Plain(nn.Module):
    def __init__(self, out_channels=3):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * (1 + t.float().view(-1, 1, 1, 1) / 1000)


def test_wrap_a_class_conditional_denoiser():
    net = Labelled()
    model = wrap_denoiser(net, linear_schedule(), (3, 8, 8),
                          conditioning=Conditioning("class", num_classes=10, null_label=10))
    assert isinstance(model, EpsModel) and model.format == "python" and model.input_shape == (3, 8, 8)
    x, t, labels = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, labels), net(x, t, labels), rtol=0, atol=0)
        torch.testing.assert_close(model(x, t), net(x, t, torch.tensor([10, 10])), rtol=0, atol=0)
    with pytest.raises(InputError, match="class label 12"):
        model(x, t, torch.tensor([1, 12]))
    json.dumps(model.config)
    assert model.config["class"].endswith("Labelled") and model.config["conditioning"]["num_classes"] == 10


def test_wrap_converts_v_prediction_and_keeps_learned_variance():
    net = Plain(out_channels=6)
    model = wrap_denoiser(net, linear_schedule(), (3, 8, 8), prediction_type="v_prediction")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0, 999])
    abar = torch.tensor(model.schedule.abar, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        v = net(x, t)[:, :3]
        torch.testing.assert_close(model(x, t), abar.sqrt() * v + (1 - abar).sqrt() * x, rtol=1e-5, atol=1e-5)


class HalfCodec(nn.Module):
    """A latent codec: 2 x 2 average pooling times 0.5."""

    def encode(self, x):
        return torch.nn.functional.avg_pool2d(x, 2) * 0.5


class Texty(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 3)

    def forward(self, x, t, states):
        return x + self.proj(states.mean(1))[:, :, None, None]


class FakeTextEncoder:
    null_caption = ""

    def encode(self, captions):
        states = torch.stack([torch.full((4, 5), float(len(c))) for c in captions]) if captions \
            else torch.zeros(0, 4, 5)
        return states, 0


def test_wrap_a_latent_text_conditioned_flow_denoiser():
    net = Texty()
    model = wrap_denoiser(net, FlowSchedule(1000), (3, 16, 16), prediction_type="flow", latent=HalfCodec(),
                          conditioning=Conditioning("text"), text_encoder=FakeTextEncoder())
    assert model.image_shape == (3, 16, 16) and model.input_shape == (3, 8, 8) and model.process == "flow"
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    states, _ = model.text_encoder.encode(["ab", "abcd"])
    with torch.no_grad():
        torch.testing.assert_close(model(z, t, states), net(z, t, states), rtol=0, atol=0)
        torch.testing.assert_close(model(z, t), net(z, t, torch.zeros(2, 4, 5)), rtol=0, atol=0)
    torch.testing.assert_close(model.latent.encode(torch.ones(1, 3, 16, 16)), torch.full((1, 3, 8, 8), 0.5))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(module=lambda x, t: x), "torch.nn.Module"),
    (dict(schedule={"kind": "linear"}), "Schedule or FlowSchedule"),
    (dict(image_shape=(3, 8)), "image_shape"),
    (dict(image_shape=(3, 8, 0)), "image_shape"),
    (dict(image_shape=(3, 8.5, 8)), "image_shape"),
    (dict(prediction_type="flow"), "does not fit a ddpm schedule"),
    (dict(prediction_type="score"), "not supported"),
    (dict(conditioning="class"), "Conditioning"),
    (dict(conditioning=Conditioning("class")), "num_classes"),
    (dict(conditioning=Conditioning("text")), "text_encoder"),
    (dict(latent=object()), "latent must have encode"),
    (dict(latent=HalfCodec(), image_shape=(3, 1, 1)), "latent.encode failed"),
    (dict(module=Plain(out_channels=4)), "returned shape"),
    (dict(image_shape=(1, 8, 8)), "failed on a trial call"),
    (dict(call=3), "call must be a function"),
])
def test_wrap_refuses_what_cannot_work(kwargs, needle):
    arguments = dict(module=Plain(), schedule=linear_schedule(), image_shape=(3, 8, 8))
    arguments.update(kwargs)
    module, schedule, shape = arguments.pop("module"), arguments.pop("schedule"), arguments.pop("image_shape")
    with pytest.raises(QmiaError, match=needle):
        wrap_denoiser(module, schedule, shape, **arguments)


def test_conditioning_values_are_checked():
    for kwargs, needle in ((dict(num_classes=-1), "num_classes"), (dict(null_label=True), "null_label"),
                           (dict(num_classes=2, class_names=("a",)), "class_names")):
        with pytest.raises(InputError, match=needle):
            Conditioning("class", **kwargs)
    assert Conditioning("class", 2, class_names=["a", "b"]).to_dict()["class_names"] == ["a", "b"]


def test_unconditional_pixel_pipeline_is_unchanged(tmp_path):
    """The one family that loaded before keeps its description keys (reports read them)."""
    pytest.importorskip("diffusers")
    model = load_model(build_pixel_unet(tmp_path / "p", learned_variance=True))
    assert {"format", "path", "unet_config", "scheduler_source", "schedule", "prediction_type",
            "learned_variance"} <= set(model.config)
    assert model.conditioning is None and model.latent is None and model.config["learned_variance"]
