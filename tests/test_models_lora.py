"""Tests of LoRA merging: load_model(folder, lora=FILE) equals the pipeline with the LoRA applied by diffusers itself, and bad files are refused in one line.

The reference keeps the LoRA unmerged (W x + scale B A x through PEFT layers), ours merges it
into W in float64 and rounds once, so they agree to float32 rounding: 1e-5 absolute.
"""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from qmia_fast.errors import ModelLoadError
from qmia_fast.models import load_model
from diffusers_builders import build_class_unet, build_lora, prompt_states

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLOSE = dict(rtol=1e-5, atol=1e-5)
T = torch.tensor([3, 400, 900])
CAPTIONS = ["a low cat", "lower", ""]


@pytest.fixture(scope="module")
def lora_files(sd_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_files")
    return {"unet": build_lora(sd_folder, root / "unet_only"),
            "both": build_lora(sd_folder, root / "with_text", text_encoder=True)}


def _diffusers_pipeline(folder, lora):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.load_lora_weights(str(lora))
    return pipe


@pytest.mark.parametrize("which", ["unet", "both"])
def test_merged_lora_equals_diffusers_load_lora_weights(sd_folder, lora_files, which):
    lora = lora_files[which]
    model = load_model(sd_folder, lora=lora)
    pipe = _diffusers_pipeline(sd_folder, lora)
    base = load_model(sd_folder)
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    states, _ = model.text_encoder.encode(CAPTIONS)
    reference_states = prompt_states(pipe.tokenizer, pipe.text_encoder, CAPTIONS)
    torch.testing.assert_close(states, reference_states, **CLOSE)
    base_states, _ = base.text_encoder.encode(CAPTIONS)
    assert torch.equal(base_states, states) == (which == "unet")  # the text encoder changes only with its LoRA
    with torch.no_grad():
        expected = pipe.unet(z, T, encoder_hidden_states=reference_states).sample
        torch.testing.assert_close(model(z, T, states), expected, **CLOSE)
        assert (model(z, T, states) - base(z, T, states)).abs().max() > 1e-2  # the LoRA matters
    described = model.config["lora"]
    assert described["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert described["base"] == str(sd_folder) and described["file"] == str(lora)
    assert described["layers"]["unet"] == 40 and described["layers"].get("text_encoder", 0) == (8 if which == "both" else 0)
    json.dumps(model.config)


def test_lora_alpha_without_metadata_scales_like_diffusers(sd_folder, lora_files, tmp_path):
    """Files without the adapter metadata (older trainers) merge at scale 1 (alpha = rank), as diffusers loads them;
    explicit per-layer alphas give scale alpha / rank; the metadata's lora_alpha 8 at rank 4 gives scale 2."""
    state = safetensors_torch.load_file(lora_files["unet"])
    plain = tmp_path / "plain.safetensors"
    safetensors_torch.save_file(state, plain)  # metadata dropped
    with_alpha = tmp_path / "alpha.safetensors"
    alphas = {k.replace(".lora.down.weight", ".alpha"): torch.tensor(2.0) for k in state
              if k.endswith(".lora.down.weight")}
    safetensors_torch.save_file({**state, **alphas}, with_alpha)
    base = load_model(sd_folder)
    z, states = torch.randn(3, 4, 8, 8), base.text_encoder.encode(CAPTIONS)[0]
    pipe = _diffusers_pipeline(sd_folder, plain)
    with torch.no_grad():
        torch.testing.assert_close(load_model(sd_folder, lora=plain)(z, T, states),
                                   pipe.unet(z, T, encoder_hidden_states=states).sample, **CLOSE)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"

    def delta(path):
        return load_model(sd_folder, lora=path).net.state_dict()[name] - base.net.state_dict()[name]

    unit = delta(plain)
    assert unit.abs().max() > 1e-3
    torch.testing.assert_close(delta(with_alpha), 0.5 * unit, **CLOSE)
    torch.testing.assert_close(delta(lora_files["unet"]), 2.0 * unit, **CLOSE)


def _rewrite(lora, tmp_path, transform, name="bad.safetensors"):
    state = safetensors_torch.load_file(lora)
    path = tmp_path / name
    safetensors_torch.save_file(transform(dict(state)), path)
    return path


def _first(state, suffix):
    return next(k for k in sorted(state) if k.endswith(suffix))


@pytest.mark.parametrize("transform, needle", [
    (lambda s: {k.replace("attn1.to_q", "attn1.to_query"): v for k, v in s.items()}, "matches no layer of the unet"),
    (lambda s: {**s, _first(s, "to_q.lora.down.weight"): torch.zeros(4, 7)}, r"do not fit the layer"),
    (lambda s: {**s, _first(s, "conv1.lora_B.weight"): torch.zeros(32, 4, 3, 3)}, r"do not fit the layer"),
    (lambda s: {k: v for k, v in s.items() if not k.endswith("lora_B.weight")}, "has no B matrix"),
    (lambda s: {k: v for k, v in s.items() if not k.endswith("lora.down.weight")}, "has no A matrix"),
    (lambda s: {**s, "lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(1, 1)}, "kohya"),
    (lambda s: {**s, _first(s, "lora_A.weight").replace("lora_A.weight", "lora_magnitude_vector"): torch.zeros(3)},
     "DoRA"),
    (lambda s: {**s, "unet.conv_in.bias_scale": torch.zeros(3)}, "is not a LoRA weight"),
    (lambda s: {**s, "unet.time_embedding.linear_1.lora_A.weight": torch.zeros(4, 31),
                "unet.time_embedding.linear_1.lora_B.weight": torch.zeros(128, 4)}, r"do not fit the layer"),
    (lambda s: {"text_encoder_2.layers.0.q_proj.lora_A.weight": torch.zeros(2, 32)}, "'text_encoder_2'"),
    (lambda s: {}, "holds no LoRA weights"),
])
def test_bad_lora_files_are_refused_in_one_line(sd_folder, lora_files, tmp_path, transform, needle):
    path = _rewrite(lora_files["unet"], tmp_path, transform)
    with pytest.raises(ModelLoadError, match=needle) as info:
        load_model(sd_folder, lora=path)
    assert "\n" not in str(info.value)


def test_lora_file_kinds(sd_folder, lora_files, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(sd_folder, lora=tmp_path / "missing.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is empty"):
        load_model(sd_folder, lora=tmp_path / "empty.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}junk")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(sd_folder, lora=tmp_path / "junk.safetensors")
    (tmp_path / "weights.txt").write_text("a")
    with pytest.raises(ModelLoadError, match=r"must be a \.safetensors"):
        load_model(sd_folder, lora=tmp_path / "weights.txt")
    # a full UNet's weights are not a LoRA
    with pytest.raises(ModelLoadError, match="is not a LoRA weight"):
        load_model(sd_folder, lora=sd_folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_lora_pickle_file_loads_like_safetensors(sd_folder, lora_files, tmp_path):
    state = safetensors_torch.load_file(lora_files["unet"])
    torch.save(state, tmp_path / "pytorch_lora_weights.bin")
    z, base = torch.randn(1, 4, 8, 8), load_model(sd_folder)
    states = base.text_encoder.encode(["a"])[0]
    plain = _rewrite(lora_files["unet"], tmp_path, lambda s: s, "plain.safetensors")  # the same, without metadata
    with torch.no_grad():
        torch.testing.assert_close(load_model(sd_folder, lora=tmp_path / "pytorch_lora_weights.bin")(z, 5, states),
                                   load_model(sd_folder, lora=plain)(z, 5, states), rtol=0, atol=0)


def test_text_encoder_lora_on_a_model_without_one(lora_files, tmp_path):
    folder = build_class_unet(tmp_path / "class")
    te_only = _rewrite(lora_files["both"], tmp_path, lambda s: {k: v for k, v in s.items()
                                                                if k.startswith("text_encoder.")})
    with pytest.raises(ModelLoadError, match="'text_encoder' .* fit no component of this model"):
        load_model(folder, lora=te_only)


def test_lora_needs_a_diffusers_model(lora_files):
    with pytest.raises(ModelLoadError, match="merges into diffusers models only"):
        load_model("builtin", lora=lora_files["unet"])
