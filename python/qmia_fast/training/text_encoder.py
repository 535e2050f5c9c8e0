"""A tiny CLIP text side for text-to-image targets: a BPE vocabulary written for the captions' words, and a frozen seeded CLIPTextModel."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import atomic_io
from ..errors import ConfigError, require_extra

__all__ = ["write_clip_vocabulary", "build_tokenizer", "text_encoder_config", "build_text_encoder",
           "encode_captions", "TEXT_ENCODING"]

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# How captions become the denoiser's condition, exactly as StableDiffusionPipeline does it.
TEXT_ENCODING = {"padding": "max_length", "truncation": True, "hidden_states": "last_hidden_state",
                 "null_caption": ""}
# CLIP's pre-tokenizer splits words, single digits and runs of other symbols (after lower-casing).
_WORDS = re.compile(r"[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable character table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_vocabulary(captions: Sequence[str], folder: str | Path) -> tuple[Path, Path]:
    """vocab.json + merges.txt: every byte (so any text tokenizes), and merges that make each caption word one token.

    Merges build a word left to right (p h -> ph, ph o -> pho, ...); where words still share
    pieces the BPE rank order may split a word in two, which is still a closed, deterministic
    vocabulary.
    """
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    seen = set()
    # Longer words first, so that a short word's merge (a n -> an) does not cut into a longer one (sandal).
    words = sorted({w for caption in captions for w in _WORDS.findall(caption.lower())}, key=lambda w: (-len(w), w))
    table = _bytes_to_unicode()
    for word in words:
        symbols = [table[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        current = symbols[0]
        for nxt in symbols[1:]:
            pair = f"{current} {nxt}"
            current += nxt
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
                vocab.setdefault(current, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_io.write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_io.write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def build_tokenizer(folder: str | Path, max_length: int):
    """A CLIPTokenizer over write_clip_vocabulary's files, model_max_length = the text encoder's positions."""
    transformers = require_extra("transformers", "diffusers", "training a text-conditioned target")
    # from_pretrained reads vocab.json + merges.txt in every transformers version (slow or fast tokenizer).
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(folder), model_max_length=int(max_length))
    return tokenizer


def text_encoder_config(vocab_size: int, tokenizer, *, dim: int, layers: int, heads: int, max_length: int
                        ) -> dict[str, Any]:
    for value, option in ((dim, "--text-dim"), (layers, "--text-layers"), (heads, "--text-heads"),
                          (max_length, "--text-max-length")):
        if int(value) < 1:
            raise ConfigError(f"{option} = {value} must be >= 1")
    if dim % heads:
        raise ConfigError(f"--text-heads {heads} does not divide --text-dim {dim}; pick a divisor of {dim}")
    if max_length < 3:
        raise ConfigError(f"--text-max-length = {max_length} leaves no room for a word between the start and end "
                          "tokens; use at least 8")
    return {"vocab_size": int(vocab_size), "hidden_size": int(dim), "intermediate_size": 4 * int(dim),
            "num_hidden_layers": int(layers), "num_attention_heads": int(heads),
            "max_position_embeddings": int(max_length), "bos_token_id": int(tokenizer.bos_token_id),
            "eos_token_id": int(tokenizer.eos_token_id), "pad_token_id": int(tokenizer.pad_token_id)}


def build_text_encoder(config: dict[str, Any], seed: int):
    """CLIPTextModel at a seeded random init, frozen (eval, no grads), as SD keeps its CLIP encoder frozen."""
    transformers = require_extra("transformers", "diffusers", "training a text-conditioned target")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_captions(tokenizer, encoder, captions: Sequence[str], batch: int = 256) -> tuple[torch.Tensor, int]:
    """(float32 [n, max_length, dim] last hidden states, number of captions truncated), as SD's pipeline encodes."""
    out, truncated = [], 0
    max_length = tokenizer.model_max_length
    for start in range(0, len(captions), batch):
        chunk = list(captions[start:start + batch])
        lengths = [len(ids) for ids in tokenizer(chunk, truncation=False)["input_ids"]]
        truncated += sum(length > max_length for length in lengths)
        ids = tokenizer(chunk, padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="pt")["input_ids"]
        out.append(encoder(ids)[0].float())
    return torch.cat(out), truncated
