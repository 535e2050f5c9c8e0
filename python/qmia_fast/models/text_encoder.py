"""Text conditioning of Stable-Diffusion-style models: a CLIP text encoder and its tokenizer, read offline, captions -> hidden states."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..errors import InputError, ModelLoadError, require_extra
from .config_io import MAX_CONFIG_BYTES, read_config_json, require_regular_file
from .diffusers_components import (
    TRANSFORMERS_WEIGHTS, PreparedComponent, check_layer_counts, check_positive_ints, prepare_component,
)

__all__ = ["ClipTextEncoder", "prepare_text_encoder", "load_tokenizer", "quiet_transformers", "TEXT_ENCODER_CLASSES"]

TEXT_ENCODER_CLASSES = ("CLIPTextModel",)
_TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json")
# Captions are encoded this many at a time, so that a long caption list does not hold every activation at once.
_ENCODE_BATCH = 64
_PREFIX = "text_model."  # transformers 4 nests CLIPTextModel's weights under it, transformers 5 does not


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logger at error level for the duration: its warnings about configs and long captions
    are ours to report (or irrelevant), not its."""
    transformers = require_extra("transformers", "diffusers", "loading a text encoder")
    logging = transformers.utils.logging
    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


class ClipTextEncoder(nn.Module):
    """encode(captions) -> (float32 [n, L, D] last hidden states, number of captions truncated to L tokens).

    Tokenised as StableDiffusionPipeline does: padded and truncated to the tokenizer's
    model_max_length L, no attention mask unless the encoder's config asks for one.
    ``null_caption`` ("") is the unconditional prompt.
    """

    null_caption = ""

    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.hidden_size = int(model.config.hidden_size)
        self.use_attention_mask = bool(getattr(model.config, "use_attention_mask", False))

    @property
    def device(self) -> torch.device:
        for tensor in self.model.parameters():
            return tensor.device
        return torch.device("cpu")

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, int]:
        if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
            raise InputError(f"captions must be a list of strings, got {type(captions).__name__}")
        bad = next((i for i, c in enumerate(captions) if not isinstance(c, str)), None)
        if bad is not None:
            raise InputError(f"captions[{bad}] is a {type(captions[bad]).__name__}; every caption must be a string")
        device = self.device
        if not captions:
            return torch.zeros(0, self.max_length, self.hidden_size, device=device), 0
        states, truncated = [], 0
        with quiet_transformers(), torch.no_grad():
            for start in range(0, len(captions), _ENCODE_BATCH):
                batch = list(captions[start:start + _ENCODE_BATCH])
                lengths = self.tokenizer(batch, truncation=False)["input_ids"]
                truncated += sum(len(ids) > self.max_length for ids in lengths)
                tokens = self.tokenizer(batch, padding="max_length", max_length=self.max_length, truncation=True,
                                        return_tensors="pt")
                mask = tokens["attention_mask"].to(device) if self.use_attention_mask else None
                out = self.model(tokens["input_ids"].to(device), attention_mask=mask)
                states.append(out[0].float())
        return torch.cat(states), int(truncated)

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        return self.encode(captions)[0]

    def describe(self) -> dict[str, Any]:
        return {"class": type(self.model).__name__, "tokenizer": type(self.tokenizer).__name__,
                "max_length": self.max_length, "hidden_size": self.hidden_size,
                "vocab_size": int(len(self.tokenizer)), "use_attention_mask": self.use_attention_mask}


def _clip_names(state: dict, expected: set) -> dict:
    """Weights of either transformers generation under the installed one's names; the old position_ids buffer dropped."""
    out = {}
    for key, value in state.items():
        if key not in expected:
            if key.startswith(_PREFIX) and key[len(_PREFIX):] in expected:
                key = key[len(_PREFIX):]
            elif _PREFIX + key in expected:
                key = _PREFIX + key
            elif key.endswith("embeddings.position_ids"):
                continue  # a buffer older transformers saved with the weights; recomputed on build
        out[key] = value
    return out


def _check_clip_sizes(config, n_tensors: int, where: str) -> None:
    check_layer_counts(config, n_tensors, where, layer_keys={"num_hidden_layers": 12})
    check_positive_ints(config, {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
                                 "vocab_size": 49408, "max_position_embeddings": 77}, where)


def prepare_text_encoder(folder: Path, config: dict, trust_checkpoint: bool) -> PreparedComponent:
    """text_encoder/: a CLIPTextModel config checked against its weights on the meta device."""
    architectures = config.get("architectures") or ["CLIPTextModel"]
    name = architectures[0] if isinstance(architectures, list) and architectures else architectures
    if name not in TEXT_ENCODER_CLASSES or config.get("model_type", "clip_text_model") != "clip_text_model":
        raise ModelLoadError(f"text_encoder {folder} is a {name!r:.60} (model_type {config.get('model_type')!r:.40}); "
                             f"only {', '.join(TEXT_ENCODER_CLASSES)} text encoders (Stable Diffusion 1.x/2.x) "
                             "are supported")
    transformers = require_extra("transformers", "diffusers", "loading a text-to-image model's text encoder")
    fields = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version")}

    def make():
        return transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(dict(fields)))

    with quiet_transformers():
        return prepare_component("text_encoder", folder, transformers.CLIPTextModel, config, trust_checkpoint,
                                 check_sizes=_check_clip_sizes, weight_names=TRANSFORMERS_WEIGHTS,
                                 build_meta=make, build=make, rename=_clip_names)


def load_tokenizer(folder: Path, max_positions: int):
    """tokenizer/ (vocab.json + merges.txt or tokenizer.json), every file bounded, loaded with local_files_only.

    Returns (tokenizer, max_length); max_length is the tokenizer's model_max_length, which must
    fit the text encoder's max_position_embeddings.
    """
    present = []
    for name in _TOKENIZER_FILES:
        path = folder / name
        if path.exists():
            if require_regular_file(path, "tokenizer file").st_size > MAX_CONFIG_BYTES:
                raise ModelLoadError(f"tokenizer file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; "
                                     "no tokenizer vocabulary is that large")
            present.append(name)
    if not ({"vocab.json", "merges.txt"} <= set(present) or "tokenizer.json" in present):
        raise ModelLoadError(f"tokenizer {folder} has neither vocab.json + merges.txt nor tokenizer.json; "
                             "save the CLIP tokenizer with save_pretrained")
    settings = read_config_json(folder / "tokenizer_config.json", "tokenizer config") \
        if "tokenizer_config.json" in present else {}
    class_name = settings.get("tokenizer_class", "CLIPTokenizer") if isinstance(settings, dict) else None
    if class_name not in _TOKENIZER_CLASSES:
        raise ModelLoadError(f"tokenizer {folder}: tokenizer_class = {class_name!r:.60} is not supported; "
                             f"use one of {', '.join(_TOKENIZER_CLASSES)}")
    transformers = require_extra("transformers", "diffusers", "loading a text-to-image model's tokenizer")
    # transformers 4's slow CLIPTokenizer needs vocab.json + merges.txt; the fast one reads tokenizer.json.
    use_fast = "vocab.json" not in present and hasattr(transformers, "CLIPTokenizerFast")
    tokenizer_class = transformers.CLIPTokenizerFast if use_fast else transformers.CLIPTokenizer
    try:
        with quiet_transformers():
            tokenizer = tokenizer_class.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise many types for damaged vocabularies
        raise ModelLoadError(f"tokenizer {folder} could not be loaded ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); re-save it with save_pretrained") from None
    length = tokenizer.model_max_length
    if not isinstance(length, int) or not 1 <= length <= max_positions:
        raise ModelLoadError(f"tokenizer {folder}: model_max_length = {length!r:.40} does not fit the text encoder's "
                             f"{max_positions} positions; set model_max_length (77 for CLIP) in tokenizer_config.json")
    return tokenizer, length
