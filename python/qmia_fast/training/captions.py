"""Captions for text-conditioned targets: templates over class names (seeded per image), written as an image folder's metadata.jsonl."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import atomic_io
from ..data.loader import FASHION_MNIST_CLASSES
from ..errors import InputError, require_extra

__all__ = ["CAPTION_TEMPLATES", "FASHION_MNIST_CLASSES", "captions_from_labels", "write_captioned_folder"]

CAPTION_TEMPLATES = ("a photo of a {name}", "a {name}", "a picture of a {name}", "an image of a {name}",
                     "a photo of the {name}", "a close-up photo of a {name}")


def captions_from_labels(labels, class_names: Sequence[str], seed: int = 0,
                         templates: Sequence[str] = CAPTION_TEMPLATES) -> list[str]:
    """One caption per image: template number rng([seed, i]) filled with the image's class name.

    Seeded per image (not one stream), so that image i's caption does not depend on the others.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InputError("labels must be a 1-d integer array, one per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise InputError(f"labels lie in [{labels.min()}, {labels.max()}] but {len(class_names)} class names were given")
    out = []
    for index, label in enumerate(labels.tolist()):
        choice = int(np.random.default_rng([int(seed), index]).integers(len(templates)))
        out.append(templates[choice].format(name=class_names[label]))
    return out


def write_captioned_folder(images: np.ndarray, captions: Sequence[str], folder: str | Path) -> list[str]:
    """Write images as PNGs 00000.png, 00001.png, ... (so that sorted order is index order) and metadata.jsonl.

    metadata.jsonl has one {"file_name": ..., "text": ...} per image, the standard layout of an
    image folder with captions; returns the file names.
    """
    image_module = require_extra("PIL.Image", "images", "writing an image folder")
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] not in (1, 3):
        raise InputError(f"images must be uint8 N x C x H x W with 1 or 3 channels, got {images.dtype} {images.shape}")
    if len(captions) != len(images):
        raise InputError(f"{len(captions)} captions for {len(images)} images; pass one caption per image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(images) - 1)))
    names = []
    for index, image in enumerate(images):
        name = f"{index:0{digits}d}.png"
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        image_module.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
        atomic_io.write_bytes(folder / name, buffer.getvalue())
        names.append(name)
    lines = [json.dumps({"file_name": name, "text": text}) for name, text in zip(names, captions)]
    atomic_io.write_text(folder / "metadata.jsonl", "\n".join(lines) + "\n")
    return names
