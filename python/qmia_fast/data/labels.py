"""Class labels: an explicit labels file (one integer per image, or file name -> label for image folders) and the check against a model's number of classes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .arrays import NPY_MAGIC, read_npy, read_npz_named
from .safe_read import decode_text, read_capped_bytes
from .table_text import first_few, is_integer_text, parse_csv, parse_json, place_by_key

__all__ = ["read_labels_file", "check_labels", "as_label_array", "MAX_LABEL_FILE_BYTES"]

# 256 MiB of text holds tens of millions of labels, far beyond any audit.
MAX_LABEL_FILE_BYTES = 1 << 28
_LABEL_COLUMNS = ("label", "labels", "class")
_FIX_COUNT = "give one integer class label per image, in index order"


def as_label_array(values, origin: str, error=DataError) -> np.ndarray:
    """Integer labels >= 0 as a 1-D int64 array, or `error` naming `origin` and the first bad entry."""
    if isinstance(values, (list, tuple)):
        for i, value in enumerate(values):
            if type(value) is not int and not isinstance(value, np.integer):
                raise error(f"{origin}: label {i} = {str(value)[:40]!r} is not an integer; {_FIX_COUNT}")
            if not 0 <= int(value) < 2**63:
                raise error(f"{origin}: label {i} = {value} is negative or too large; class labels are 0, 1, 2, ...")
        return np.array([int(v) for v in values], dtype=np.int64).reshape(-1)
    array = np.asarray(values)
    if array.ndim != 1:
        raise error(f"{origin}: labels must be a 1-D list, one per image, not an array of shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise error(f"{origin}: labels are {array.dtype} values, not integers; save integer class labels")
    negative = array < 0
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise error(f"{origin}: label {i} = {array[i]} is negative; class labels are 0, 1, 2, ...")
    if array.dtype == np.uint64 and (array >= 2**63).any():
        raise error(f"{origin}: a label is too large; class labels are 0, 1, 2, ...")
    return array.astype(np.int64)


def _text_integers(text: str, origin: str) -> list[int]:
    values = []
    for number, line in enumerate(text.split("\n"), start=1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            if not is_integer_text(token):
                raise DataError(f"{origin}: line {number}: {token[:40]!r} is not an integer label; {_FIX_COUNT} "
                                "(or, for an image folder, a CSV with file_name,label columns)")
            values.append(int(token))
    return values


def _label_column(header, origin: str) -> str:
    column = next((c for c in _LABEL_COLUMNS if c in header), None)
    if column is None:
        raise DataError(f"{origin}: has no label column (columns: {first_few(header, 8)}); name it 'label' "
                        "beside 'file_name' or 'index'")
    return column


def _from_csv(text: str, origin: str, n_images: int, file_names):
    first = text.split("\n", 1)[0].replace(",", " ").split()
    if all(is_integer_text(token) for token in first):
        return _text_integers(text, origin)  # no header: one integer per image
    try:
        header, rows = parse_csv(text)
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    column = _label_column(header, origin)
    by = "file_name" if "file_name" in header else "index" if "index" in header else None
    if by is None:
        return [row[column] for _, row in rows]
    entries = [(f"line {line}", row[by], row[column]) for line, row in rows]
    return place_by_key(entries, n_images=n_images, file_names=file_names, by=by, origin=origin,
                        what="label", fix="add a row for each image")


def _from_json(text: str, origin: str, n_images: int, file_names):
    try:
        value = parse_json(text)
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    if isinstance(value, dict) and set(value) == {"labels"}:
        value = value["labels"]
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise DataError(f"{origin}: JSON must be a list of integers, {{\"labels\": [...]}} or an object mapping "
                        "file names to labels")
    entries = [(f"key {key[:80]!r}", key, label) for key, label in value.items()]
    return place_by_key(entries, n_images=n_images, file_names=file_names, by="file_name", origin=origin,
                        what="label", fix="add an entry for each image")


def _string_labels(values: list) -> list:
    # CSV cells are strings: whole numbers become ints, anything else stays and is named below.
    out = []
    for value in values:
        text = value.strip() if isinstance(value, str) else None
        out.append(int(text) if text is not None and is_integer_text(text) else value)
    return out


def read_labels_file(path, n_images: int, *, file_names: Sequence[str] | None = None,
                     where: str = "--labels") -> np.ndarray:
    """One int64 class label per image from a labels file, in index order.

    .npy (1-D integers), .npz (array 'labels' or the only array), .txt / headerless .csv
    (integers separated by whitespace or commas; '#' starts a comment) and .json (a list, or
    {"labels": [...]}) hold one label per image in index order. For an image folder
    (`file_names` = the images' relative paths) a .csv with 'file_name' and 'label' columns or a
    .json object {file name: label} maps files to labels; a .csv with 'index' and 'label'
    columns works for any source. A count that does not match the images, a non-integer or
    negative label, an image without a label or a label given twice is a DataError naming the
    file; mapped rows for files that are not among the images are ignored with a warning.
    """
    path = Path(path)
    origin = f"{where} {path}"
    if not path.exists():
        raise DataError(f"{origin}: no such file")
    suffix = path.suffix.lower()
    data = b"" if suffix in (".npy", ".npz") else \
        read_capped_bytes(path, MAX_LABEL_FILE_BYTES, where=where, what="labels file")
    if suffix == ".npy" or data.startswith(NPY_MAGIC):
        values = read_npy(path, where=where, max_bytes=MAX_LABEL_FILE_BYTES)
    elif suffix == ".npz":
        values = read_npz_named(path, "labels", where=where, what="labels", max_bytes=MAX_LABEL_FILE_BYTES)
    else:
        text = decode_text(data, where=where, path=path)
        if suffix == ".json":
            values = _from_json(text, origin, n_images, file_names)
        elif suffix == ".csv":
            values = _string_labels(_from_csv(text, origin, n_images, file_names))
        else:
            values = _text_integers(text, origin)
    labels = as_label_array(values, origin)
    if len(labels) != n_images:
        raise DataError(f"{origin}: holds {len(labels)} labels but --data has {n_images} images; {_FIX_COUNT}"
                        + (" (or map file names to labels)" if file_names is not None else ""))
    return labels


def check_labels(labels, num_classes: int, where: str = "--labels", *,
                 names: Sequence[str] | None = None) -> np.ndarray:
    """The labels as int64 if every one lies in 0..num_classes-1, for a model with `num_classes` classes.

    labels None (the data has none) is an error saying how to give them. A label out of range
    is a DataError naming the first such image (by `names[i]`, a file name, where given).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"the model's number of classes must be a positive integer, not {num_classes!r:.40}")
    if labels is None:
        raise DataError(f"{where}: the model is conditioned on one of {num_classes} classes, but the data has no "
                        "class labels; pass --labels FILE (one integer per image) or use class sub-folders")
    labels = as_label_array(labels, where)
    bad = labels >= num_classes
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        image = f"image {i}" + (f" ({names[i]})" if names is not None and i < len(names) else "")
        raise DataError(f"{where}: {image} has label {labels[i]}, but the model has {num_classes} classes "
                        f"(labels 0..{num_classes - 1}); {int(bad.sum())} image(s) are out of range: check that "
                        "the labels belong to this model")
    return labels

