"""Small bounded table readers shared by the labels and captions files: JSON without duplicate keys, JSON Lines and CSV rows with line numbers."""
from __future__ import annotations

import csv
import io
import json
import re
import warnings
from typing import Any, Sequence

from ..errors import DataError

__all__ = ["parse_json", "parse_jsonl", "parse_csv", "NameIndex", "place_by_key", "parse_index", "first_few",
           "is_integer_text", "shown"]

# ASCII digits only: str.isdigit also accepts superscripts and other scripts' digits, which int() refuses
# or reads as numbers nobody typed as such.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,20}")


def is_integer_text(text: str) -> bool:
    """Whether `text` is a plain decimal integer (optional sign, at most 20 ASCII digits)."""
    return _INTEGER_TEXT.fullmatch(text) is not None


def _no_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DataError(f"key {key[:80]!r} appears twice in one JSON object; keep one")
        seen[key] = value
    return seen


def parse_json(text: str, what: str = "JSON") -> Any:
    """json.loads with repeated keys refused (json keeps the last one silently) and errors as DataError."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise DataError(f"{what} is nested too deeply") from None
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"is not valid {what} ({str(exc)[:160]})") from None


def parse_jsonl(text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns in order of first appearance, [(line number, row object)]) of JSON Lines; blank lines are skipped."""
    columns: dict[str, None] = {}
    rows = []
    # Split on "\n" only: str.splitlines would also split inside strings at U+2028 and friends.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, "JSON")
        except DataError as exc:
            raise DataError(f"line {number}: {exc}") from None
        if not isinstance(row, dict):
            raise DataError(f"line {number} is a JSON {type(row).__name__}, not an object; each line must be "
                            'one object such as {"file_name": "a.png", "text": "a cat"}')
        columns.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(columns), rows


def parse_csv(text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header columns, [(line number, {column: value})]) of a CSV file with a header row; blank rows are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("is empty; a CSV file needs a header row naming its columns")
        header = [name.strip() for name in header]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataError(f"header names column {repeated[0][:80]!r} twice; name each column once")
        rows = []
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise DataError(f"line {reader.line_num} has {len(values)} fields but the header has "
                                f"{len(header)}; quote fields that contain commas")
            rows.append((reader.line_num, dict(zip(header, values))))
    except csv.Error as exc:
        raise DataError(f"line {reader.line_num}: not valid CSV ({str(exc)[:120]})") from None
    return header, rows


class NameIndex:
    """Relative file name -> image index for an image folder's sorted list.

    A name matches exactly, or after dropping surrounding spaces and leading './' and writing
    '\\' as '/' (lists written on Windows), so that a name which is itself a valid file name is
    never rewritten into another one.
    """

    def __init__(self, file_names: Sequence[str]):
        self.names = list(file_names)
        self._index = {name: i for i, name in enumerate(self.names)}

    def find(self, name: str) -> int | None:
        found = self._index.get(name)
        if found is None:
            cleaned = name.strip().replace("\\", "/")
            while cleaned.startswith("./"):
                cleaned = cleaned[2:]
            found = self._index.get(cleaned)
        return found


def parse_index(value, n_images: int) -> int | None:
    """An 'index' column's value as an int (None when out of range 0..n_images-1), or a DataError."""
    if isinstance(value, str):
        text = value.strip()
        if not is_integer_text(text):
            raise DataError(f"index {value[:40]!r} is not a whole number")
        value = int(text)
    elif type(value) is not int:
        raise DataError(f"index {str(value)[:40]!r} is not a whole number")
    return value if 0 <= value < n_images else None


def place_by_key(entries, *, n_images: int, file_names: Sequence[str] | None, by: str, origin: str,
                 what: str, fix: str) -> list:
    """Values in image order from (place, key, value) rows keyed by 'file_name' or 'index'.

    `place` says where a row is ("line 7"). Two rows for one image are a DataError naming both; an image without a row is a
    DataError naming the first few such images and how many; rows whose image is not among the
    images are ignored with one counted warning.
    """
    if by == "file_name" and file_names is None:
        raise DataError(f"{origin}: rows are keyed by file_name, but the images do not come from an image folder, "
                        "so they have no file names; key the rows by 'index' (0-based position) instead")
    index = NameIndex(file_names) if by == "file_name" else None
    placed: list = [None] * n_images
    line_of: dict[int, int] = {}
    unknown = []
    for line, key, value in entries:
        try:
            if by == "file_name":
                if not isinstance(key, str):
                    raise DataError(f"file_name {str(key)[:40]!r} is not a string")
                position = index.find(key)
            else:
                position = parse_index(key, n_images)
        except DataError as exc:
            raise DataError(f"{origin}: {line}: {exc}") from None
        if position is None:
            unknown.append(key)
            continue
        if position in line_of:
            raise DataError(f"{origin}: {line} repeats the {what} of {str(key)[:120]!r} given by "
                            f"{line_of[position]}; keep one row per image")
        line_of[position] = line
        placed[position] = value
    missing = [i for i in range(n_images) if i not in line_of]
    if missing:
        names = [file_names[i] for i in missing] if file_names is not None else [f"index {i}" for i in missing]
        raise DataError(f"{origin}: {len(missing)} of {n_images} images have no {what} (e.g. {first_few(names)}); "
                        f"{fix}")
    if unknown:
        warnings.warn(f"{origin}: {len(unknown)} row(s) name images that are not among the images of --data "
                      f"(first: {shown(unknown[0])}); they were ignored", stacklevel=3)
    return placed


def shown(name) -> str:
    """A name as an error message may print it: escaped where it holds line breaks or other control characters."""
    text = str(name)[:120]
    return text if text.isprintable() else repr(text)


def first_few(names, count: int = 3) -> str:
    shown_names = [shown(n) for n in list(names)[:count]]
    more = len(names) - len(shown_names)
    return ", ".join(shown_names) + (f" and {more} more" if more > 0 else "")
