"""Each image's condition for a conditional denoiser: class labels or captions checked once, turned into the tensors every UNet call takes."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError

CONDITION_MODES = ("own", "null")
# Distinct captions whose embeddings are kept on the device at once (a step needs at most its own).
_CAPTION_CACHE = 4096


class Conditions:
    """The conditioning of one scorer: what each image is conditioned on in every denoiser call.

    mode "own": each image's own class label or caption (``conditions=`` of the score call);
    "null": the null condition for every image (the null class of a class-conditional model
    trained with classifier-free-guidance dropout, or the empty prompt). Unconditional
    models take no condition.

    Captions are encoded one at a time (a batch of one, whatever the step holds), so a
    caption's embedding, and so an image's score, does not depend on which other captions
    were scored with it; each distinct caption is encoded once per scorer (bounded cache).
    """

    def __init__(self, model, mode: str = "own"):
        if mode not in CONDITION_MODES:
            raise ConfigError(f"condition = {mode!r} must be one of {', '.join(CONDITION_MODES)}")
        self.spec = getattr(model, "conditioning", None)
        self.mode = mode
        self.model = model
        self.truncated = 0  # captions longer than the tokenizer takes (cut), over this scorer's life
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()
        if self.spec is not None and mode == "null" and self.spec.kind == "class" and self.spec.null_label is None:
            raise ConfigError("condition = 'null' needs a null class, and this class-conditional model has none "
                              "(it was not trained with classifier-free-guidance dropout); use condition 'own'")

    @property
    def kind(self) -> str | None:
        return None if self.spec is None else self.spec.kind

    def describe(self) -> dict | None:
        if self.spec is None:
            return None
        return {**self.spec.to_dict(), "mode": self.mode}

    def check(self, conditions, n: int):
        """The per-image conditions of n images, checked: None, int64 [n] labels, or a list of n captions."""
        if self.spec is None:
            if conditions is not None:
                raise InputError("conditions were given but the model is unconditional; drop them")
            return None
        if self.mode == "null":
            return None  # every image gets the null condition; given conditions are not used
        if conditions is None:
            what = "one class label per image" if self.spec.kind == "class" else "one caption per image"
            raise InputError(f"the model is {self.spec.kind}-conditional: pass conditions= ({what}), or score with "
                             "condition='null' (--condition null)")
        if self.spec.kind == "class":
            return check_labels(conditions, n, self.spec.num_classes)
        return check_captions(conditions, n)

    def tensor(self, values, rows: int, device: torch.device):
        """The condition tensor for a micro-batch of `rows` (values for its real rows; padding repeats the last)."""
        if self.spec is None:
            return None
        if self.spec.kind == "class":
            if self.mode == "null":
                return torch.full((rows,), int(self.spec.null_label), dtype=torch.long, device=device)
            labels = torch.as_tensor(np.asarray(values, dtype=np.int64))
            if labels.shape[0] < rows:
                labels = torch.cat([labels, labels[-1:].expand(rows - labels.shape[0])])
            return labels.to(device)
        captions = [""] * rows if self.mode == "null" else list(values) + [values[-1]] * (rows - len(values))
        return torch.stack([self._embedding(caption, device) for caption in captions])

    def _embedding(self, caption: str, device: torch.device) -> torch.Tensor:
        cached = self._embeddings.get(caption)
        if cached is not None:
            self._embeddings.move_to_end(caption)
            return cached
        with torch.inference_mode():
            hidden, truncated = self.model.text_encoder.encode([caption])
        self.truncated += int(truncated)
        embedding = hidden[0].to(device=device, dtype=torch.float32)
        self._embeddings[caption] = embedding
        if len(self._embeddings) > _CAPTION_CACHE:
            self._embeddings.popitem(last=False)
        return embedding


def check_labels(labels, n: int, num_classes: int | None) -> np.ndarray:
    """int64 [n] class labels in [0, num_classes), or an InputError naming the first bad one."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    values = np.asarray(labels)
    if values.shape != (n,):
        raise InputError(f"conditions must hold one class label per image ({n}), got shape {values.shape}")
    if values.size and values.dtype.kind not in "iu":
        raise InputError(f"class labels must be integers, got dtype {values.dtype}")
    values = values.astype(np.int64, copy=False)
    bad = (values < 0) | (values >= num_classes) if num_classes is not None else values < 0
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        limit = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise InputError(f"class label {int(values[first])} of image {first} is outside the model's classes {limit}; "
                         "check the labels file or the model")
    return values


def check_captions(captions: Sequence[str], n: int) -> list[str]:
    """A list of n caption strings, or an InputError."""
    if isinstance(captions, (str, bytes)) or not hasattr(captions, "__len__"):
        raise InputError("conditions for a text-conditional model must be a list of captions, one per image")
    if len(captions) != n:
        raise InputError(f"conditions hold {len(captions)} captions for {n} images; pass one caption per image")
    out = list(captions)
    for i, caption in enumerate(out):
        if not isinstance(caption, str):
            raise InputError(f"caption {i} is a {type(caption).__name__}, not a string")
    return out


def take(conditions, positions):
    """The conditions of the images at `positions` (a slice or index array) of a checked conditions value."""
    if conditions is None:
        return None
    if isinstance(conditions, np.ndarray):
        return conditions[positions]
    if isinstance(positions, slice):
        return conditions[positions]
    return [conditions[int(i)] for i in positions]
