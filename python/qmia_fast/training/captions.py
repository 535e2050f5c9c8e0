"""Captions for text-conditioned targets: templates over class names (seeded per image), metadata.jsonl writing and reading."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import atomic_io
from ..data.formats import open_regular_file
from ..errors import ConfigError, DataError, InputError, require_extra

__all__ = ["CAPTION_TEMPLATES", "FASHION_MNIST_CLASSES", "captions_from_labels", "write_captioned_folder",
           "read_captions", "MAX_CAPTION_FILE_BYTES"]

CAPTION_TEMPLATES = ("a photo of a {name}", "a {name}", "a picture of a {name}", "an image of a {name}",
                     "a photo of the {name}", "a close-up photo of a {name}")
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")
MAX_CAPTION_FILE_BYTES = 64 << 20  # captions of millions of images; a larger file is not a caption list
MAX_CAPTION_CHARS = 1000


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


def read_captions(source: str | Path, file_names: Sequence[str], column: str = "text",
                  where: str = "--captions") -> list[str]:
    """The caption of each file in file_names (paths relative to the image folder), from a metadata.jsonl/.csv.

    Every image needs exactly one caption; file names outside the folder are ignored, as the
    standard loaders do.
    """
    path = Path(source)
    try:
        with open_regular_file(path) as handle:
            raw = handle.read(MAX_CAPTION_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"{where} {path} does not exist; pass a metadata.jsonl or metadata.csv with "
                        "file_name and caption columns") from None
    except DataError as exc:
        raise DataError(f"{where} {path} {exc}") from None
    if len(raw) > MAX_CAPTION_FILE_BYTES:
        raise DataError(f"{where} {path} is larger than {MAX_CAPTION_FILE_BYTES >> 20} MiB; pass a caption file "
                        "of this data set only")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where} {path} is not UTF-8 text") from None
    rows = _csv_rows(text, path, where) if path.suffix.lower() == ".csv" else _jsonl_rows(text, path, where)
    by_name: dict[str, str] = {}
    for number, row in rows:
        name, caption = row.get("file_name"), row.get(column)
        if not isinstance(name, str) or not name:
            raise DataError(f"{where} {path}: row {number} has no file_name")
        if not isinstance(caption, str):
            raise DataError(f"{where} {path}: row {number} ({name[:60]}) has no string {column!r}; "
                            "pass --caption-column to name the caption column")
        if len(caption) > MAX_CAPTION_CHARS:
            raise DataError(f"{where} {path}: row {number} has a caption of {len(caption)} characters, more than "
                            f"{MAX_CAPTION_CHARS}")
        key = Path(name[2:] if name.startswith("./") else name).as_posix()
        if key in by_name:
            raise DataError(f"{where} {path}: {name[:60]} has two captions (rows); keep one per image")
        by_name[key] = caption
    missing = [name for name in file_names if name not in by_name]
    if missing:
        raise DataError(f"{where} {path}: {len(missing)} of {len(file_names)} images have no caption, e.g. "
                        f"{missing[0][:60]}; add a row per image")
    return [by_name[name] for name in file_names]


def _jsonl_rows(text: str, path: Path, where: str):
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} {path}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} {path}: line {number} must be a JSON object with file_name and a caption")
        rows.append((number, row))
    if not rows:
        raise DataError(f"{where} {path} holds no captions")
    return rows


def _csv_rows(text: str, path: Path, where: str):
    try:
        rows = [(number, dict(row)) for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2)]
    except csv.Error as exc:
        raise DataError(f"{where} {path}: not a CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{where} {path} holds no captions")
    return rows


def caption_source(data: str, captions: str | None) -> Path:
    """The caption file of a --text run: --captions, else metadata.jsonl/.csv inside the --data image folder."""
    if captions is not None:
        return Path(captions)
    folder = Path(str(data))
    if folder.is_dir():
        for name in ("metadata.jsonl", "metadata.csv"):
            if (folder / name).is_file():
                return folder / name
    raise ConfigError("--text needs captions: pass --captions FILE (metadata.jsonl/.csv with file_name and text) "
                      "or --data an image folder holding a metadata.jsonl")
