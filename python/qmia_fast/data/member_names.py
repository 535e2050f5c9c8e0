"""Member and split lists that name images by relative file name: reading them, mapping names to indices, and the warning for numbered names read as indices."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import SplitError
from .arrays import read_npy, read_npz_named
from .formats import sniff_format
from .safe_read import read_capped_text
from .table_text import NameIndex, first_few, is_integer_text, parse_json

__all__ = ["MAX_NAME_LIST_BYTES", "is_name_list", "names_to_indices", "read_member_file", "warn_if_numbered",
           "NAMES_NEED_FOLDER"]

# A list of a million relative paths is tens of MiB; 256 MiB is no member list.
MAX_NAME_LIST_BYTES = 1 << 28
NAMES_NEED_FOLDER = "file names are accepted only when --data is an image folder; give indices otherwise"
_NUMBER = re.compile(r"(\d+)")


def is_name_list(values: Any) -> bool:
    """Whether `values` lists file names (strings) rather than indices; a list mixing both is a SplitError."""
    if isinstance(values, np.ndarray):
        return values.dtype.kind == "U"
    if isinstance(values, (list, tuple)) and values:
        strings = sum(isinstance(v, str) for v in values)
        if 0 < strings < len(values):
            raise SplitError("the list mixes file names and indices; use one or the other")
        return strings == len(values)
    return False


def names_to_indices(names, file_names: Sequence[str] | None, set_name: str, origin: str) -> np.ndarray:
    """int64 indices of the images `names` lists, by relative path (see table_text.NameIndex).

    A name that is no image of the folder (the first few are named, with how many), or two
    names for one image, is a SplitError naming `origin` and `set_name`.
    """
    if file_names is None:
        raise SplitError(f"{origin}: {set_name} lists file names, not integer indices; {NAMES_NEED_FOLDER}")
    if isinstance(names, np.ndarray):
        if names.ndim != 1:
            raise SplitError(f"{origin}: {set_name} must be a 1-D list of file names, got shape {names.shape}")
        names = [str(n) for n in names.tolist()]
    index = NameIndex(file_names)
    positions, unknown, first_at = [], [], {}
    for i, name in enumerate(names):
        found = index.find(name)
        if found is None:
            unknown.append(repr(name[:120]))
            continue
        if found in first_at:
            raise SplitError(f"{origin}: {set_name}[{i}] = {name[:120]!r} is the same image as {set_name}"
                             f"[{first_at[found]}]; list each image once")
        first_at[found] = i
        positions.append(found)
    if unknown:
        example = f", such as {file_names[0]!r}" if file_names else ""
        raise SplitError(f"{origin}: {len(unknown)} of {len(names)} {set_name} names are not images of --data "
                         f"({first_few(unknown)}); names are paths relative to the --data folder{example}")
    return np.array(positions, dtype=np.int64)


def _names_from_text(text: str) -> list[str]:
    names = []
    for line in text.split("\n"):
        name = line.strip()
        if name and not name.startswith("#"):
            names.append(name)
    return names


def _integers_from_text(text: str) -> list[int] | None:
    values = []
    for line in text.split("\n"):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            if not is_integer_text(token):
                return None
            values.append(int(token))
    return values


def read_member_file(path: Path, *, where: str = "--members") -> np.ndarray | list[str]:
    """Member indices (int64 array) or relative file names (list of str) from a member file.

    .npy / .npz (integers, or strings), .json (a list of integers or of strings, or
    {"members": [...]}) or text: integers separated by whitespace or commas ('#' starts a
    comment), or else one file name a line (lines starting with '#' are comments).
    """
    origin = f"{where} {path}"
    kind = sniff_format(path)
    if kind == "npy":
        values = read_npy(path, where=where, max_text_bytes=MAX_NAME_LIST_BYTES)
    elif kind == "npz":
        values = read_npz_named(path, "members", where=where, what="member", error=SplitError,
                                max_text_bytes=MAX_NAME_LIST_BYTES)
    else:
        text = read_capped_text(path, MAX_NAME_LIST_BYTES, where=where, what="member list")
        if kind == "json":
            try:
                value = parse_json(text)
            except Exception as exc:  # noqa: BLE001 - DataError from the parser, reworded as a split error
                raise SplitError(f"{origin}: {exc}") from None
            if isinstance(value, dict):
                value = value.get("members")
            if not isinstance(value, list) or not (all(type(v) is int for v in value)
                                                   or all(isinstance(v, str) for v in value)):
                raise SplitError(f"{origin}: JSON must be a list of integers or of file names, or "
                                 "{\"members\": [...]}")
            values = value
        else:
            integers = _integers_from_text(text)
            values = integers if integers is not None else _names_from_text(text)
    if isinstance(values, np.ndarray) or (values and isinstance(values[0], str)):
        return values
    for i, value in enumerate(values):
        if not -2**63 <= value < 2**63:
            raise SplitError(f"{origin}: entry {i} = {value} is out of range for an image index")
    return np.array(values, dtype=np.int64)


def _natural_key(name: str) -> tuple:
    # re.split with a group alternates text and digit runs, so ints only ever meet ints.
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_NUMBER.split(name)))


def _numbered_out_of_order(file_names: Sequence[str]) -> tuple[str, str] | None:
    """(a, b): neighbours in the sorted list where a sorts first although its numbers make it later
    (img_10.png before img_2.png); None when the sorted order is also the numeric one."""
    numbered = [name for name in file_names if _NUMBER.search(name)]
    for first, second in zip(numbered, numbered[1:]):
        if _natural_key(first) > _natural_key(second):
            return first, second
    return None


def warn_if_numbered(file_names: Sequence[str] | None, origin: str) -> None:
    """One warning when an index list meets a folder whose numbered file names sort otherwise than by number."""
    if not file_names:
        return
    pair = _numbered_out_of_order(file_names)
    if pair is not None:
        warnings.warn(f"{origin}: holds indices, which are positions in the image folder's list sorted by relative "
                      f"path, but the file names are numbered in another order ({pair[0]} sorts before {pair[1]}); "
                      f"if the indices mean the numbers in the names, list file names (e.g. {pair[1]}) instead",
                      stacklevel=3)
