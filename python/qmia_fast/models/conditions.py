"""Conditions of conditional denoisers: conditioning.json read and checked against the weights, and the call adapters that pass labels or text states."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import InputError, ModelLoadError
from .config_io import read_config_json
from .wrapper import Conditioning

__all__ = ["CONDITIONING_FILE", "read_conditioning_json", "class_conditioning", "text_conditioning", "names_from_id2label",
           "ClassLabelCall", "TextStatesCall", "check_labels"]

CONDITIONING_FILE = "conditioning.json"
# cfg_dropout: the share of training steps that saw the null class (what `qmia-fast train-target --condition class`
# records); informational, checked for range only.
_KEYS = ("kind", "num_classes", "null_label", "class_names", "cfg_dropout")
# How a text-conditioned target was trained to encode its captions; the text encoder here encodes them this way
# (StableDiffusionPipeline's way), so a file may say so, and a file that says otherwise is refused.
_TEXT_ENCODING = {"padding": "max_length", "truncation": True, "hidden_states": "last_hidden_state",
                  "null_caption": ""}
_TEXT_KEYS = ("max_length", *_TEXT_ENCODING)


def read_conditioning_json(root: Path) -> dict[str, Any] | None:
    """conditioning.json at a model folder's root ({"kind", "num_classes", "null_label", "class_names"}), or None."""
    path = root / CONDITIONING_FILE
    if not path.exists():
        return None
    value = read_config_json(path, "conditioning file")
    if not isinstance(value, dict):
        raise ModelLoadError(f"conditioning file {path} must hold a JSON object such as "
                             '{"kind": "class", "num_classes": 10, "null_label": 10}')
    known = _KEYS + (_TEXT_KEYS if value.get("kind") == "text" else ())
    unknown = sorted(k for k in value if k not in known and not str(k).startswith("_"))
    if unknown:
        raise ModelLoadError(f"conditioning file {path}: unknown key(s) {', '.join(map(repr, unknown[:4]))}; "
                             f"the keys are {', '.join(_KEYS)}")
    if value.get("kind") not in ("class", "text"):
        raise ModelLoadError(f"conditioning file {path}: kind = {value.get('kind')!r:.40} must be \"class\" or \"text\"")
    for key, expected in _TEXT_ENCODING.items():
        if key in value and value[key] != expected:
            raise ModelLoadError(f"conditioning file {path}: {key} = {value[key]!r:.40}, but captions are encoded with "
                                 f"{key} = {expected!r} (as StableDiffusionPipeline does); this target cannot be "
                                 "audited with its own encoding")
    dropout = value.get("cfg_dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0.0 <= float(dropout) < 1.0):
        raise ModelLoadError(f"conditioning file {path}: cfg_dropout = {dropout!r:.40} must be a number in [0, 1)")
    value["_path"] = str(path)
    return value


def _count(value, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelLoadError(f"{where}: {key} = {value!r:.40} must be an integer of at least {minimum}")
    return value


def names_from_id2label(id2label, num_classes: int, where: str) -> tuple[str, ...] | None:
    """DiTPipeline's model_index.json id2label ({"0": "tench, Tinca tinca", ...}) as names indexed by class."""
    if id2label is None:
        return None
    if not isinstance(id2label, Mapping) or not all(isinstance(v, str) for v in id2label.values()):
        raise ModelLoadError(f"{where}: id2label must map class ids to names")
    try:
        by_id = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ModelLoadError(f"{where}: id2label keys must be class ids (0, 1, ...)") from None
    if sorted(by_id) != list(range(num_classes)):
        raise ModelLoadError(f"{where}: id2label names {len(by_id)} ids but the model has {num_classes} classes "
                             f"0..{num_classes - 1}; fix id2label or write conditioning.json")
    return tuple(by_id[i] for i in range(num_classes))


def class_conditioning(declared: dict | None, *, num_classes: int | None, rows: int | None,
                       class_names: tuple[str, ...] | None, where: str) -> Conditioning:
    """The class conditioning of a denoiser whose label table has `rows` rows (None: labels are not looked up).

    declared (conditioning.json) wins over what the config says (num_classes, class_names); its
    class count and null label must fit the table: labels 0..num_classes-1 and the null label
    (at least num_classes) below rows. Without a declaration the null label is num_classes where
    the table has exactly one row more (DiT's classifier-free-guidance class), else None.
    """
    if declared is not None:
        where = declared["_path"]
        if declared["kind"] != "class":
            raise ModelLoadError(f"conditioning file {where} says kind {declared['kind']!r}, but the denoiser is "
                                 "class-conditional; write \"kind\": \"class\"")
        if "num_classes" not in declared:
            raise ModelLoadError(f"conditioning file {where} needs num_classes")
        num_classes = _count(declared["num_classes"], "num_classes", where, 1)
        null = declared.get("null_label")
        null = None if null is None else _count(null, "null_label", where, 0)
        names = declared.get("class_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != num_classes:
                raise ModelLoadError(f"conditioning file {where}: class_names must be a list of {num_classes} strings")
            class_names = tuple(names)
        elif class_names is not None and len(class_names) != num_classes:
            class_names = None
    else:
        if num_classes is None:
            raise ModelLoadError(f"{where}: the class embedding does not tell how many classes there are; write a "
                                 f"{CONDITIONING_FILE} with kind, num_classes and null_label at the model folder's root")
        null = num_classes if rows is not None and rows == num_classes + 1 else None
    if rows is not None and num_classes > rows:
        raise ModelLoadError(f"{where}: {num_classes} classes do not fit the weights' class embedding of {rows} rows; "
                             f"fix num_classes in {CONDITIONING_FILE} or the config")
    if null is not None and (null < num_classes or (rows is not None and null >= rows)):
        limit = f" and below the table's {rows} rows" if rows is not None else ""
        raise ModelLoadError(f"{where}: null_label = {null} must lie outside the classes 0..{num_classes - 1}{limit}; "
                             f"fix null_label in {CONDITIONING_FILE}")
    return Conditioning(kind="class", num_classes=num_classes, null_label=null, class_names=class_names)


def text_conditioning(declared: dict | None, where: str) -> Conditioning:
    if declared is not None and declared["kind"] != "text":
        raise ModelLoadError(f"conditioning file {declared['_path']} says kind {declared['kind']!r}, but {where} "
                             "is text-conditioned; write \"kind\": \"text\" or remove the file")
    return Conditioning(kind="text")


def check_labels(cond, conditioning: Conditioning, device: torch.device) -> torch.Tensor:
    """cond as int64 labels on device, each a class or the null label; values are checked where they live on the CPU
    (a check on a GPU would wait for it; the scorer checks labels on the host before moving them)."""
    if not isinstance(cond, torch.Tensor) or cond.dim() != 1 or cond.is_floating_point() or cond.is_complex() \
            or cond.dtype == torch.bool:
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise InputError(f"cond must be an int64 tensor [N] of class labels for this class-conditional model, got {shape}")
    if cond.device.type == "cpu" and cond.numel() and conditioning.num_classes is not None:
        bad = (cond < 0) | (cond >= conditioning.num_classes)
        if conditioning.null_label is not None:
            bad &= cond != conditioning.null_label
        if bool(bad.any()):
            value = int(cond[bad][0])
            null = "" if conditioning.null_label is None else f" or the null label {conditioning.null_label}"
            raise InputError(f"cond holds the class label {value}; labels must lie in [0, {conditioning.num_classes})"
                             f"{null}")
    return cond.to(device=device, dtype=torch.long)


class ClassLabelCall:
    """net(x, t, class_labels=labels) (UNet2DModel) or net(x, timestep=t, class_labels=labels) (DiT); without a
    condition the null label stands in where the model has one."""

    def __init__(self, conditioning: Conditioning, timestep_keyword: bool):
        self.conditioning = conditioning
        self.timestep_keyword = timestep_keyword

    def __call__(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond=None):
        if cond is None:
            if self.conditioning.null_label is None:
                raise InputError("this model is class-conditional and has no null class; pass cond, an int64 "
                                 f"tensor [N] of labels in [0, {self.conditioning.num_classes})")
            labels = torch.full((x.shape[0],), self.conditioning.null_label, dtype=torch.long, device=x.device)
        else:
            labels = check_labels(cond, self.conditioning, x.device)
        if self.timestep_keyword:
            return net(x, timestep=t, class_labels=labels, return_dict=False)[0]
        return net(x, t, class_labels=labels, return_dict=False)[0]


class TextStatesCall:
    """net(x, t, encoder_hidden_states=cond) for UNet2DConditionModel; without a condition, the empty prompt's
    states (encoded once per device and dtype)."""

    def __init__(self, text_encoder, hidden_size: int):
        self.text_encoder = text_encoder
        self.hidden_size = int(hidden_size)
        self._null: dict[tuple, torch.Tensor] = {}

    def null_states(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (str(device), dtype)
        if key not in self._null:
            states, _ = self.text_encoder.encode([self.text_encoder.null_caption])
            self._null[key] = states.to(device=device, dtype=dtype)
        return self._null[key].expand(batch, -1, -1)

    def __call__(self, net: nn.Module, x: torch.Tensor, t: torch.Tensor, cond=None):
        if cond is None:
            states = self.null_states(x.shape[0], x.device, x.dtype)
        else:
            if not isinstance(cond, torch.Tensor) or cond.dim() != 3 or not cond.is_floating_point() \
                    or cond.shape[2] != self.hidden_size:
                shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
                raise InputError(f"cond must be float text-encoder states [N, L, {self.hidden_size}] "
                                 f"(text_encoder.encode(captions)), got {shape}")
            states = cond.to(device=x.device, dtype=x.dtype)
        return net(x, t, encoder_hidden_states=states, return_dict=False)[0]
