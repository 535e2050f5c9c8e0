"""Tests of Stable-Diffusion-style text-to-image pipelines: CLIP text encoder and tokenizer, UNet2DConditionModel on VAE latents.

References are the components diffusers and transformers load themselves (from_pretrained on the
same folders), called directly in fp32: the UNet and VAE exactly; the text encoder to 1e-6,
since transformers may choose a different attention kernel for its own copy.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from qmia_fast.errors import InputError, ModelLoadError
from qmia_fast.models import Conditioning, load_model
from diffusers_builders import TOKENIZER_MAX_LENGTH, build_text_to_image, prompt_states

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXACT = dict(rtol=0, atol=0)
T = torch.tensor([0, 250, 999])
CAPTIONS = ["a low cat", "", "a very long caption that cannot fit"]


@pytest.fixture(scope="module")
def sd_model(sd_folder):
    return load_model(sd_folder)


@pytest.fixture(scope="module")
def references(sd_folder):
    unet = diffusers.UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()
    clip = transformers.CLIPTextModel.from_pretrained(sd_folder / "text_encoder", local_files_only=True).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(sd_folder / "tokenizer", local_files_only=True)
    vae = diffusers.AutoencoderKL.from_pretrained(sd_folder / "vae").eval()
    return unet, clip, tokenizer, vae


def test_text_to_image_pipeline_loads_as_a_text_conditioned_latent_model(sd_model, sd_folder):
    model = sd_model
    assert model.conditioning == Conditioning("text") and model.process == "ddpm"
    assert model.image_shape == (3, 16, 16) and model.input_shape == (4, 8, 8)
    assert model.schedule.T == 1000 and model.config["scheduler"]["class"] == "PNDMScheduler"
    assert model.config["components"]["text_encoder"]["class"] == "CLIPTextModel"
    assert model.config["components"]["tokenizer"]["class"] == "CLIPTokenizer"
    assert model.text_encoder.null_caption == "" and model.text_encoder.max_length == TOKENIZER_MAX_LENGTH
    json.dumps(model.config)


def test_text_encoder_equals_clip_on_the_tokenizer_ids_and_counts_truncation(sd_model, references):
    _, clip, tokenizer, _ = references
    states, truncated = sd_model.text_encoder.encode(CAPTIONS)
    assert states.dtype == torch.float32 and states.shape == (3, TOKENIZER_MAX_LENGTH, 32)
    torch.testing.assert_close(states, prompt_states(tokenizer, clip, CAPTIONS), rtol=1e-6, atol=1e-6)
    assert truncated == 1  # only the last caption has more than 8 tokens with its start and end tokens
    assert sd_model.text_encoder.encode(["a", "b"])[1] == 0
    assert not torch.equal(states[0], states[1])


def test_text_encoder_inputs(sd_model):
    empty, truncated = sd_model.text_encoder.encode([])
    assert empty.shape == (0, TOKENIZER_MAX_LENGTH, 32) and truncated == 0
    for bad, needle in (("a cat", "list of strings"), ([1, "a"], r"captions\[0\] is a int"), (None, "list of strings")):
        with pytest.raises(InputError, match=needle):
            sd_model.text_encoder.encode(bad)


def test_unet_call_with_own_and_null_condition(sd_model, references):
    unet, clip, tokenizer, _ = references
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    states, _ = sd_model.text_encoder.encode(CAPTIONS)
    null = prompt_states(tokenizer, clip, [""] * 3)
    with torch.no_grad():
        torch.testing.assert_close(sd_model(z, T, states), unet(z, T, encoder_hidden_states=states).sample, **EXACT)
        torch.testing.assert_close(sd_model(z, T), unet(z, T, encoder_hidden_states=null).sample,
                                   rtol=1e-5, atol=1e-5)
        assert not torch.allclose(sd_model(z, T, states), sd_model(z, T), atol=1e-3)
    for bad in (torch.zeros(3, 8, 16), torch.zeros(3, 32), torch.zeros(3, 8, 32, dtype=torch.long)):
        with pytest.raises(InputError, match=r"text-encoder states \[N, L, 32\]"):
            sd_model(z, T, bad)


def test_vae_latents(sd_model, references):
    vae = references[3]
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(sd_model.latent.encode(pixels), expected, **EXACT)


def test_v_prediction_text_to_image(tmp_path):
    folder = build_text_to_image(tmp_path / "v", prediction_type="v_prediction")
    model = load_model(folder)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    assert model.prediction_type == "v_prediction"
    z = torch.randn(3, 4, 8, 8)
    states, _ = model.text_encoder.encode(CAPTIONS)
    abar = torch.tensor(model.schedule.abar, dtype=torch.float32)[T].view(-1, 1, 1, 1)
    with torch.no_grad():
        v = unet(z, T, encoder_hidden_states=states).sample
        torch.testing.assert_close(model(z, T, states), abar.sqrt() * v + (1 - abar).sqrt() * z, rtol=1e-5, atol=1e-5)


def test_loading_is_quiet(sd_folder, capfd):
    import warnings

    capfd.readouterr()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = load_model(sd_folder)
        model.text_encoder.encode(["a caption far too long for eight tokens"])
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == "", captured
    assert [str(w.message) for w in record if issubclass(w.category, UserWarning)] == []


# ---------------------------------------------------------------------- what is refused


def _copy(sd_folder, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(sd_folder, folder)
    return folder


def _edit(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("remove, needle", [
    ("tokenizer", "has text_encoder/ but no tokenizer/"),
    ("text_encoder", "has tokenizer/ but no text_encoder/"),
])
def test_text_components_come_together(sd_folder, tmp_path, remove, needle):
    folder = _copy(sd_folder, tmp_path)
    shutil.rmtree(folder / remove)
    _edit(folder / "model_index.json", **{remove: [None, None]})
    with pytest.raises(ModelLoadError, match=needle):
        load_model(folder)


def test_text_unet_without_text_encoder_is_refused(sd_folder, tmp_path):
    folder = _copy(sd_folder, tmp_path)
    shutil.rmtree(folder / "tokenizer")
    shutil.rmtree(folder / "text_encoder")
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelLoadError, match="UNet2DConditionModel .* no text_encoder/ and tokenizer/"):
        load_model(folder)
    with pytest.raises(ModelLoadError, match="no text_encoder/"):
        load_model(folder / "unet")


@pytest.mark.parametrize("component, changes, needle", [
    ("unet/config.json", {"addition_embed_type": "text_time"}, "addition_embed_type"),
    ("unet/config.json", {"cross_attention_dim": [32, 32]}, "one positive integer"),
    ("text_encoder/config.json", {"architectures": ["T5EncoderModel"], "model_type": "t5"}, "T5EncoderModel"),
    ("text_encoder/config.json", {"hidden_size": 64, "intermediate_size": 37}, "shape mismatch"),
    ("text_encoder/config.json", {"num_hidden_layers": 10**6}, "ask for more layers"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": 1000}, "model_max_length = 1000 does not fit"),
    ("tokenizer/tokenizer_config.json", {"tokenizer_class": "T5Tokenizer"}, "T5Tokenizer"),
    ("vae/config.json", {"latents_mean": [0.0] * 4}, "latents_mean"),
    ("vae/config.json", {"_class_name": "AutoencoderTiny"}, "AutoencoderTiny"),
    ("model_index.json", {"unet": ["diffusers", "UNet2DModel"]}, "names unet a 'UNet2DModel'"),
    ("model_index.json", {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, "text_encoder_2"),
    ("model_index.json", {"prior_pipe": ["diffusers", "Something"]}, "cannot use"),
])
def test_wrong_components_are_refused_in_one_line(sd_folder, tmp_path, component, changes, needle):
    folder = _copy(sd_folder, tmp_path)
    _edit(folder / component, **changes)
    with pytest.raises(ModelLoadError, match=needle) as info:
        load_model(folder)
    assert "\n" not in str(info.value)


def test_cross_attention_width_must_be_the_text_encoders(tmp_path):
    folder = build_text_to_image(tmp_path / "wide", cross_attention_dim=64)
    with pytest.raises(ModelLoadError, match="cross_attention_dim = 64 but the text encoder's hidden_size is 32"):
        load_model(folder)


def test_tokenizer_without_vocabulary_and_text_encoder_without_weights(sd_folder, tmp_path):
    folder = _copy(sd_folder, tmp_path)
    (folder / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ModelLoadError, match="neither vocab.json \\+ merges.txt nor tokenizer.json"):
        load_model(folder)
    folder = tmp_path / "copy2"
    shutil.copytree(sd_folder, folder)
    (folder / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no weights .*model.safetensors"):
        load_model(folder)


def test_old_transformers_weight_names_load(sd_folder, sd_model, tmp_path):
    """transformers 4 wrote CLIPTextModel's weights under text_model. with a position_ids buffer; 5 does neither."""
    from safetensors.torch import load_file, save_file

    folder = _copy(sd_folder, tmp_path)
    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(path)
    renamed = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in state.items()}
    renamed["text_model.embeddings.position_ids"] = torch.arange(TOKENIZER_MAX_LENGTH)[None]
    save_file(renamed, path)
    model = load_model(folder)
    torch.testing.assert_close(model.text_encoder.encode(CAPTIONS)[0], sd_model.text_encoder.encode(CAPTIONS)[0],
                               **EXACT)


def test_missing_transformers_is_a_one_line_error_naming_the_extra(sd_folder, monkeypatch):
    import sys

    from qmia_fast.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install '\.\[diffusers\]'") as info:
        load_model(sd_folder)
    assert "\n" not in str(info.value)


def test_a_text_targets_conditioning_file_may_say_how_captions_were_encoded(tmp_path):
    """train-target --text records its caption encoding; the same encoding is accepted, another is refused."""
    import json

    import diffusers_builders as build

    from qmia_fast.errors import ModelLoadError
    from qmia_fast.models import load_model

    folder = build.build_text_to_image(tmp_path / "sd")
    declared = {"kind": "text", "max_length": build.TOKENIZER_MAX_LENGTH, "padding": "max_length",
                "truncation": True, "hidden_states": "last_hidden_state", "null_caption": "", "cfg_dropout": 0.1}
    (folder / "conditioning.json").write_text(json.dumps(declared))
    assert load_model(folder).conditioning.kind == "text"
    for key, value in (("padding", "longest"), ("hidden_states", "pooler_output"), ("max_length", 77)):
        (folder / "conditioning.json").write_text(json.dumps({**declared, key: value}))
        with pytest.raises(ModelLoadError, match=key):
            load_model(folder)
