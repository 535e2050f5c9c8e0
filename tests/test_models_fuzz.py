"""Hypothesis fuzzers for the new families' files (scheduler, DiT, VAE, CLIP and tokenizer configs, conditioning.json): a model that runs, or a QmiaError, within bounded memory and time."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qmia_fast.errors import QmiaError
from qmia_fast.models import load_model
from qmia_fast.models.scheduler_kinds import DDPM_SCHEDULERS, FLOW_SCHEDULERS, resolve_scheduler
from qmia_fast.models.wrapper import EpsModel
from diffusers_builders import build_dit
from test_config_fuzz import FUZZ, JSON_VALUES, NEAR_VALID, _json_text, _load_or_error, _memory_bound

pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Each example loads a whole pipeline under tracemalloc (several times slower than without): fewer examples
# keep the file within a minute.
FEW = settings(FUZZ, max_examples=25)
FEWER = settings(FUZZ, max_examples=10)
_NUMBERS = itertools.count()

_CLASSES = st.sampled_from(sorted(DDPM_SCHEDULERS)[:6] + sorted(FLOW_SCHEDULERS)
                           + ["ScoreSdeVeScheduler", "LCMScheduler", "Nope", ""])
_SCHEDULER_KEYS = st.sampled_from(["num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                                   "prediction_type", "shift", "use_flow_sigmas", "flow_shift", "timestep_type",
                                   "rescale_betas_zero_snr"])


@FUZZ
@given(class_name=_CLASSES, values=st.dictionaries(_SCHEDULER_KEYS, NEAR_VALID, max_size=4))
def test_scheduler_settings_give_a_schedule_or_a_qmia_error(class_name, values):
    try:
        resolved = resolve_scheduler({"_class_name": class_name, **values}, "fuzz")
    except QmiaError:
        return
    assert resolved.prediction_type in ("epsilon", "v_prediction", "sample", "flow")
    assert 1 <= resolved.schedule.T <= 100_000


def _variant(source: Path, tmp_path: Path, edits: dict[str, dict | str]) -> Path:
    """A copy of `source` whose weights are links to the originals and whose edited files are rewritten."""
    folder = tmp_path / f"v{next(_NUMBERS)}"
    shutil.copytree(source, folder, copy_function=lambda src, dst: Path(dst).symlink_to(Path(src).resolve()))
    for name, content in edits.items():
        path = folder / name
        path.unlink(missing_ok=True)
        if isinstance(content, dict):
            original = json.loads((source / name).read_text()) if (source / name).exists() else {}
            content = _json_text({**original, **content})
        path.write_text(content)
    return folder


def _runs(model: EpsModel) -> None:
    x = torch.zeros(1, *model.input_shape)
    cond = None
    if model.conditioning is not None and model.conditioning.kind == "class":
        cond = torch.zeros(1, dtype=torch.long)
    with _memory_bound(), torch.no_grad():
        if model.conditioning is not None and model.conditioning.kind == "text":
            cond, _ = model.text_encoder.encode(["a cat"])
        out = model(x, torch.zeros(1, dtype=torch.long), cond)
        if model.latent is not None:
            assert tuple(model.latent.encode(torch.zeros(1, *model.image_shape)).shape[1:]) == model.input_shape
    assert tuple(out.shape) == tuple(x.shape)


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    return build_dit(tmp_path_factory.mktemp("fuzz_dit") / "dit")


_DIT_KEYS = st.sampled_from(["num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
                             "sample_size", "patch_size", "num_embeds_ada_norm", "norm_type", "_class_name",
                             "activation_fn", "norm_num_groups"])
_VAE_KEYS = st.sampled_from(["in_channels", "out_channels", "latent_channels", "block_out_channels",
                             "layers_per_block", "down_block_types", "scaling_factor", "shift_factor", "_class_name",
                             "norm_num_groups", "latents_mean"])
_CONDITIONING = st.fixed_dictionaries({"kind": st.sampled_from(["class", "text", "x"])},
                                      optional={"num_classes": NEAR_VALID, "null_label": NEAR_VALID,
                                                "class_names": JSON_VALUES, "other": JSON_VALUES})


@FEW
@given(dit=st.dictionaries(_DIT_KEYS, NEAR_VALID, max_size=2), vae=st.dictionaries(_VAE_KEYS, NEAR_VALID, max_size=2),
       conditioning=st.none() | _CONDITIONING, index=st.none() | st.dictionaries(st.sampled_from(
           ["id2label", "vae", "transformer", "scheduler", "extra"]), JSON_VALUES, max_size=2))
def test_dit_pipeline_files_give_a_model_or_a_qmia_error(tmp_path, dit_folder, dit, vae, conditioning, index):
    edits: dict = {"transformer/config.json": dit, "vae/config.json": vae}
    if conditioning is not None:
        edits["conditioning.json"] = _json_text(conditioning)
    if index is not None:
        edits["model_index.json"] = index
    result = _load_or_error(lambda: load_model(_variant(dit_folder, tmp_path, edits)))
    if isinstance(result, EpsModel):
        _runs(result)


_CLIP_KEYS = st.sampled_from(["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                              "vocab_size", "max_position_embeddings", "architectures", "model_type", "hidden_act",
                              "use_attention_mask", "layer_norm_eps"])
_TOKENIZER_KEYS = st.sampled_from(["model_max_length", "tokenizer_class", "unk_token", "pad_token", "bos_token",
                                   "eos_token", "do_lower_case"])


@FEWER
@given(clip=st.dictionaries(_CLIP_KEYS, NEAR_VALID, max_size=2),
       tokenizer=st.dictionaries(_TOKENIZER_KEYS, NEAR_VALID, max_size=2),
       vocab=st.none() | st.text(max_size=40), unet=st.dictionaries(st.sampled_from(
           ["cross_attention_dim", "addition_embed_type", "transformer_layers_per_block", "attention_head_dim"]),
           NEAR_VALID, max_size=1))
def test_text_to_image_files_give_a_model_or_a_qmia_error(tmp_path, sd_folder, clip, tokenizer, vocab, unet):
    edits: dict = {"text_encoder/config.json": clip, "tokenizer/tokenizer_config.json": tokenizer,
                   "unet/config.json": unet}
    if vocab is not None:
        edits["tokenizer/vocab.json"] = vocab
    result = _load_or_error(lambda: load_model(_variant(sd_folder, tmp_path, edits)))
    if isinstance(result, EpsModel):
        _runs(result)
