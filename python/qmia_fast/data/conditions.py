"""Each image's condition for load_data: class labels (explicit file or array, else the format's own) and captions (explicit file or list, else the folder's metadata file)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError, InputError
from .captions import find_metadata_file, read_captions
from .labels import as_label_array, read_labels_file

__all__ = ["resolve_labels", "resolve_captions"]


def resolve_labels(labels: Any, format_labels, format_source: str, n_images: int,
                   file_names: Sequence[str] | None, label: str) -> tuple[np.ndarray | None, str]:
    """(int64 labels or None, where they came from): an explicit `labels` wins over the format's own."""
    if labels is None:
        if format_labels is None:
            return None, ""
        array = np.asarray(format_labels)
        if array.ndim != 1 or len(array) != n_images or array.dtype.kind not in "iu":
            raise DataError(f"--data {label}: labels must be {n_images} integers, one per image, "
                            f"got {array.dtype} of shape {array.shape}")
        return as_label_array(array, f"--data {label}"), format_source
    if isinstance(labels, (str, os.PathLike)):
        return read_labels_file(Path(labels), n_images, file_names=file_names), f"labels from {Path(labels).name}"
    if isinstance(labels, (np.ndarray, list, tuple)):
        array = as_label_array(labels, "labels argument", error=InputError)
        if len(array) != n_images:
            raise InputError(f"labels argument: {len(array)} labels for {n_images} images; give one per image")
        return array, "labels argument"
    raise InputError(f"--labels must be a file path or a list of integers, not {type(labels).__name__}")


def resolve_captions(captions: Any, caption_column: str | None, n_images: int, file_names: Sequence[str] | None,
                     folder: Path | None) -> tuple[list[str] | None, str]:
    """(captions in index order or None, a note): an explicit `captions` wins over the folder's metadata file."""
    if captions is None:
        metadata = find_metadata_file(folder) if folder is not None else None
        if metadata is None:
            if caption_column is not None:
                raise ConfigError("--caption-column was given but there are no captions: pass --captions FILE or "
                                  "put a metadata.jsonl / metadata.csv in the image folder")
            return None, ""
        return read_captions(metadata, n_images=n_images, file_names=file_names, caption_column=caption_column,
                             where="--data", folder_metadata=True)
    if isinstance(captions, (str, os.PathLike)):
        return read_captions(Path(captions), n_images=n_images, file_names=file_names,
                             caption_column=caption_column)
    if isinstance(captions, (list, tuple)):
        if caption_column is not None:
            raise ConfigError("--caption-column applies to a captions file, not to a list of captions")
        if len(captions) != n_images:
            raise InputError(f"captions argument: {len(captions)} captions for {n_images} images; give one per image")
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise InputError(f"captions argument: caption {i} is {type(caption).__name__}, not a string")
        return list(captions), "captions argument"
    raise InputError(f"--captions must be a file path or a list of strings, not {type(captions).__name__}")

