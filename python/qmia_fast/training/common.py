"""What every train-target mode shares: image and option checks, the epoch sampler, data digests, resumable checkpoints."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..models.checkpoint_io import safe_torch_load
from ..runtime import resolve_device
from ..seeds import check_seed

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "train_summary.json"
CHECKPOINT_TAG = "qmia-fast-train-checkpoint"
CHECKPOINT_VERSION = 1
RECENT_LOSSES = 100  # the "final loss" is the mean over this many last steps


class EpochSampler:
    """Shuffled passes over the data (each image once per epoch); its state is two tensors, so it checkpoints."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order = torch.randperm(n, generator=generator)
        self.position = 0

    def next(self, batch: int) -> torch.Tensor:
        parts, needed = [], batch
        while needed:
            if self.position == self.n:
                self.order = torch.randperm(self.n, generator=self.generator)
                self.position = 0
            take = min(needed, self.n - self.position)
            parts.append(self.order[self.position:self.position + take])
            self.position += take
            needed -= take
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.order, self.position = state["order"].clone(), int(state["position"])


def validate_images(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise InputError(f"images must be a numpy array or tensor (N x C x H x W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"images must be a non-empty N x C x H x W array, got shape {images.shape}")
    if images.dtype == np.uint8:
        images = np.ascontiguousarray(images)
        # torch.from_numpy warns on read-only arrays (memory maps, load_data's outputs); copy those once.
        return images if images.flags.writeable else images.copy()
    if images.dtype.kind == "f":
        if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
            raise InputError("float images must lie in [0, 1]; pass uint8 in [0, 255] or floats in [0, 1]")
        return np.ascontiguousarray(images, dtype=np.float32)
    raise InputError(f"images must be uint8 in [0, 255] or floats in [0, 1], got dtype {images.dtype}")


def validate_hparams(h: dict[str, Any]) -> dict[str, Any]:
    def check(ok: bool, name: str, rule: str):
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')} = {h[name]!r} {rule}")

    for name in ("steps", "batch_size", "save_every"):
        check(isinstance(h[name], (int, np.integer)) and not isinstance(h[name], bool) and h[name] >= 1,
              name, "must be an integer >= 1")
    check(isinstance(h["warmup"], (int, np.integer)) and h["warmup"] >= 0, "warmup", "must be an integer >= 0")
    check_seed(h["seed"], "--seed")
    check(finite(h["lr"]) and h["lr"] > 0, "lr", "must be a positive number")
    check(finite(h["ema_decay"]) and 0.0 <= h["ema_decay"] < 1.0, "ema_decay", "must be in [0, 1)")
    check(finite(h["grad_clip"]) and h["grad_clip"] >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
    check(finite(h["weight_decay"]) and h["weight_decay"] >= 0, "weight_decay", "must be >= 0")
    out = {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v) for k, v in h.items()}
    for name in ("lr", "ema_decay", "grad_clip", "weight_decay"):
        out[name] = float(out[name])
    out["hflip"], out["bf16"] = bool(out["hflip"]), bool(out["bf16"])
    return out


def finite(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def resolve_training_device(device) -> torch.device:
    # Training pins the GPU index, so that the checkpoint records where it ran.
    resolved = resolve_device(device, default="auto", name="--device")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def data_digest(data: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(repr(data.shape).encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def read_training_checkpoint(out_dir: Path, fingerprint: Mapping[str, Any], name: str = CHECKPOINT_NAME,
                             tag: str = CHECKPOINT_TAG, version: int = CHECKPOINT_VERSION):
    """The checkpoint out_dir/name of a run with this fingerprint, None if there is none, else a ConfigError."""
    path = out_dir / name
    if not path.is_file():
        return None
    checkpoint = safe_torch_load(
        path, trust_checkpoint=False, what="training checkpoint",
        unsafe_advice=f"train-target writes plain tensors only, so this file is not one of its checkpoints; "
                      f"delete {path} or choose another --out to train afresh",
    )
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != tag:
        raise ConfigError(f"--out {out_dir}: {name} is not a qmia-fast training checkpoint")
    if checkpoint.get("version") != version:
        raise ConfigError(f"--out {out_dir}: {name} has version {checkpoint.get('version')!r}; "
                          f"this qmia-fast resumes version {version}")
    saved = checkpoint.get("fingerprint", {})
    differing = [key for key in fingerprint if normalise(saved.get(key)) != normalise(fingerprint[key])]
    if differing:
        details = "; ".join(f"{key}: saved {short(saved.get(key))}, now {short(fingerprint[key])}"
                            for key in differing[:3])
        raise ConfigError(
            f"--out {out_dir} holds a training run with a different configuration ({details}); "
            "rerun with the original options to resume, or choose another --out"
        )
    return checkpoint


def normalise(value):
    # Tuples come back from torch.load as lists, ints may come back as floats in nested JSON-ish dicts.
    if isinstance(value, Mapping):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def own_version() -> str:
    from .. import __version__

    return __version__
