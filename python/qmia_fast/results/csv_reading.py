"""Reading a CSV score file with bounded memory: streamed row by row into float64 columns, rows and bytes capped, its sidecar checked against its hash."""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
from array import array
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..data.formats import open_regular_file
from ..errors import DataError, QmiaError
from ..safe_read import parse_json, read_json

# A CSV score file is streamed, never held whole: memory is 8 bytes per kept cell, and the rows are
# capped so that it stays under about half a gigabyte whatever the file; bigger tables belong in .npz.
MAX_CSV_BYTES = 1 << 30
MAX_CSV_ROWS = 1 << 23
MAX_CSV_COLUMNS = 256
_SIDECAR_LIMIT = 1 << 20
_MAX_METADATA_CHARS = 1 << 20

# choose(header columns, metadata of an old-style first line) -> {column position: (name, kind)},
# kind "number" (must parse), "optional" (empty cell -> NaN) or "integer" (an int).
Chooser = Callable[[list[str], dict], Mapping[int, tuple[str, str]]]


class _Hashing(io.RawIOBase):
    """A binary stream that hashes what passes through it, so the CSV is hashed in the same single read."""

    def __init__(self, handle, limit: int):
        self.handle, self.limit, self.read_bytes = handle, limit, 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.handle.read(min(len(buffer), self.limit + 1 - self.read_bytes))
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise DataError(f"grew beyond {self.limit} bytes while being read")
        self.digest.update(data)
        buffer[:len(data)] = data
        return len(data)


def read_csv_sidecar(path: Path, where: str) -> dict | None:
    """NAME.csv.json beside `path` ({"metadata", "csv_sha256"}), None when there is none; a damaged one is DataError."""
    sidecar = path.with_name(path.name + ".json")
    if not os.path.lexists(sidecar):
        return None
    content = read_json(sidecar, _SIDECAR_LIMIT, f"{where} sidecar")
    if not isinstance(content, dict) or not isinstance(content.get("metadata"), dict):
        raise DataError(f"{where} sidecar {sidecar} is not a qmia-fast CSV sidecar (a JSON object with "
                        "'metadata'); remove it or re-create the score file")
    return content


def read_csv_columns(path: Path, where: str, choose: Chooser, old_mark: str
                     ) -> tuple[dict[str, np.ndarray], dict | None, str]:
    """Stream `path`: returns (the chosen columns as float64 arrays, the old-style metadata line or None, sha256)."""
    try:
        handle = open_regular_file(path)
    except QmiaError as exc:
        raise DataError(f"{where} {path} {exc}") from None
    except OSError as exc:
        raise DataError(f"{where} {path}: cannot be read ({exc.strerror or exc})") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{where} {path}: {size} bytes, more than the {MAX_CSV_BYTES} bytes read from a "
                            "CSV score file; write the scores as .npz instead")
        hashing = _Hashing(handle, MAX_CSV_BYTES)
        text = io.TextIOWrapper(io.BufferedReader(hashing), encoding="utf-8-sig", newline="")
        line_number = 1
        try:
            first = text.readline(_MAX_METADATA_CHARS + len(old_mark) + 2)
            metadata = None
            if first.startswith("#"):
                if not first.startswith(old_mark):
                    raise DataError(f"{where} {path}: its first line is a comment but not a `{old_mark.strip()}` "
                                    "metadata line; remove it")
                if not first.endswith(("\n", "\r")):
                    raise DataError(f"{where} {path}: its metadata line is longer than {_MAX_METADATA_CHARS} "
                                    "characters; this is not a score file")
                metadata = parse_json(first[len(old_mark):], f"{where} {path}: its metadata")
                if not isinstance(metadata, dict):
                    raise DataError(f"{where} {path}: its metadata must be a JSON object; re-create the file")
                lines = text
                line_number = 2
            else:
                lines = itertools.chain([first], text)
            reader = csv.reader(lines)
            header = next(reader, None)
            if not header:
                raise DataError(f"{where} {path} is empty: expected a header line with score,label columns")
            if len(header) > MAX_CSV_COLUMNS:
                raise DataError(f"{where} {path}: {len(header)} columns; a score file has at most {MAX_CSV_COLUMNS}")
            columns = [name.strip().lower() for name in header]
            chosen = choose(columns, metadata or {})
            stores = {name: array("d") for name, _ in chosen.values()}
            rows = 0
            for row in reader:
                line_number = reader.line_num + (1 if metadata is not None else 0)
                if not row:
                    continue
                rows += 1
                if rows > MAX_CSV_ROWS:
                    raise DataError(f"{where} {path}: more than {MAX_CSV_ROWS} rows; write the scores as .npz "
                                    "instead")
                for position, (name, kind) in chosen.items():
                    stores[name].append(_cell(row, position, kind, name, where, path, line_number))
            for _ in iter(lambda: hashing.read(1 << 20), b""):
                pass  # the rest of the file, hashed (nothing after the last row, normally)
        except UnicodeDecodeError:
            raise DataError(f"{where} {path}: not a UTF-8 text CSV file") from None
        except csv.Error as exc:
            raise DataError(f"{where} {path} line {line_number}: malformed CSV ({exc}); re-create the file") from None
    return {name: np.frombuffer(store, dtype=np.float64).copy() for name, store in stores.items()}, metadata, \
        hashing.digest.hexdigest()


def _cell(row, position: int, kind: str, name: str, where: str, path, line_number: int) -> float:
    try:
        cell = row[position].strip()
        if kind == "optional" and cell == "":
            return float("nan")
        if kind == "integer":
            return float(int(cell))
        return float(cell)
    except (IndexError, ValueError):
        raise DataError(f"{where} {path} line {line_number}: {name} must be a number, got "
                        f"{','.join(row)[:80]!r}") from None


def check_sidecar_hash(sidecar: Mapping[str, Any] | None, digest: str, path: Path, where: str) -> None:
    """A sidecar describes only the CSV bytes it was written with: any other CSV beside it is refused."""
    if sidecar is None:
        return
    expected = sidecar.get("csv_sha256")
    if expected is not None and expected != digest:
        raise DataError(f"{where} {path}: its sidecar {path.name}.json was written for other bytes (the CSV was "
                        "edited or replaced since); re-create the score file, or remove the sidecar and state the "
                        "direction")
