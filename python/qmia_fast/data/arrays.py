"""Bounded .npy / .npz readers (no pickle): declared shapes are checked against the file and the caller's limits before anything is allocated."""
from __future__ import annotations

import ast
import os
import struct
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataError
from .safe_pickle import checked_element_count
from .safe_read import fail, guard, open_regular_file, read_exact, readinto_exact

__all__ = ["NPY_MAGIC", "ZIP_MAGIC", "read_npy", "NpzReader", "read_array_file", "read_npz_arrays",
           "MAX_ARRAY_FILE_BYTES", "MAX_UNICODE_BYTES"]

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_MAX_NPY_HEADER = 65536
# Plain numeric arrays, plus unicode arrays for metadata such as a split's source or file names.
_NPY_KINDS = "biuf"
MAX_UNICODE_BYTES = 1 << 20
# Deflate cannot expand data more than ~1032x; a member claiming more is corrupt or a bomb.
DEFLATE_MAX_RATIO = 1032
# What score-file readers decompress at most by default: 134M float64 scores, far beyond any audit.
MAX_ARRAY_FILE_BYTES = 1 << 30


# --------------------------------------------------------------------------- npy / npz

def _parse_npy_header(stream, total_size: int, what: str, max_bytes: int | None = None,
                      max_elements: int | None = None,
                      max_text_bytes: int = MAX_UNICODE_BYTES) -> tuple[np.dtype, tuple, bool, int]:
    magic = read_exact(stream, 6, f"{what} header")
    if magic != NPY_MAGIC:
        raise DataError(f"{what} is not a .npy array (bad magic bytes)")
    major, _minor = read_exact(stream, 2, f"{what} header")
    if major == 1:
        (header_len,) = struct.unpack("<H", read_exact(stream, 2, f"{what} header"))
        prefix = 10
    elif major in (2, 3):
        (header_len,) = struct.unpack("<I", read_exact(stream, 4, f"{what} header"))
        prefix = 12
    else:
        raise DataError(f"{what} has unknown .npy format version {major}")
    if header_len > _MAX_NPY_HEADER:
        raise DataError(f"{what} declares a {header_len}-byte header, which no valid .npy has")
    text = read_exact(stream, header_len, f"{what} header").decode("utf-8" if major == 3 else "latin1")
    header = ast.literal_eval(text)
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise DataError(f"{what} has a malformed .npy header")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str):
        raise DataError(f"{what} holds a structured array; only plain numeric arrays are read")
    dtype = np.dtype(descr)
    if dtype.kind not in _NPY_KINDS + "U" or dtype.hasobject or dtype.fields or dtype.subdtype:
        raise DataError(f"{what} has dtype {dtype}, which is not a plain numeric array "
                        "(object arrays are never unpickled)")
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) or len(shape) > 8 \
            or not all(type(d) is int and d >= 0 for d in shape):
        raise DataError(f"{what} has a malformed .npy header")
    count = checked_element_count(shape, dtype.itemsize, what)
    nbytes = count * dtype.itemsize
    if max_elements is not None and count > max_elements:
        raise DataError(f"{what} declares shape {shape}: {count} elements, more than the {max_elements} expected")
    if max_bytes is not None and nbytes > max_bytes:
        raise DataError(f"{what} declares shape {shape} of {dtype} ({nbytes} bytes), more than the {max_bytes} "
                        "bytes this reader accepts")
    if dtype.kind == "U" and nbytes > max_text_bytes:
        raise DataError(f"{what} holds a {nbytes}-byte string array, more than the {max_text_bytes} bytes of "
                        "text this reader accepts")
    data_bytes = total_size - prefix - header_len
    if nbytes != data_bytes:
        raise DataError(f"{what} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                        f"{data_bytes} bytes of data (truncated or corrupt)")
    return dtype, shape, fortran, count


def _read_npy_stream(stream, total_size: int, what: str, max_bytes: int | None = None,
                     max_elements: int | None = None, max_text_bytes: int = MAX_UNICODE_BYTES) -> np.ndarray:
    dtype, shape, fortran, count = _parse_npy_header(stream, total_size, what, max_bytes, max_elements,
                                                     max_text_bytes)
    flat = np.empty(count, dtype=dtype)
    readinto_exact(stream, flat, f"{what} data")
    array = flat.reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_npy(path: Path, *, where: str = "--data", max_bytes: int | None = None,
             max_elements: int | None = None, max_text_bytes: int = MAX_UNICODE_BYTES) -> np.ndarray:
    """Read a .npy file without pickle, checking the declared size against the file size (and the limits) first.

    String (unicode) arrays are read up to `max_text_bytes` bytes (numpy stores 4 bytes a character).
    """
    def action():
        with open_regular_file(path) as fh:
            return _read_npy_stream(fh, os.fstat(fh.fileno()).st_size, "the array", max_bytes, max_elements,
                                    max_text_bytes)
    return guard(where, path, action)


class NpzReader:
    """Lazy, bounded reader of a .npz archive: keys() lists arrays, read(key) loads one.

    Each member's declared size is checked against its header, its compression method and
    ratio before anything is allocated; pickled (object) members are refused.
    """

    def __init__(self, path: Path, *, where: str = "--data"):
        self.path, self.where = Path(path), where
        self._file = guard(where, path, lambda: open_regular_file(self.path))
        self._archive_size = os.fstat(self._file.fileno()).st_size
        try:
            self._zip = guard(where, path, lambda: zipfile.ZipFile(self._file))
        except DataError:
            self._file.close()
            raise
        try:
            members = guard(where, path, self._zip.infolist)
        except DataError:
            self.close()
            raise
        self._members = {info.filename[:-4]: info for info in members if info.filename.endswith(".npy")}
        if not self._members:
            self.close()
            raise fail(where, path, "is a zip archive without .npy arrays, not an .npz file")

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._zip.close()
        except Exception:  # noqa: BLE001 - closing a damaged archive must not mask the real error
            pass
        self._file.close()

    def keys(self) -> list[str]:
        return list(self._members)

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def declared_size(self, key: str) -> int:
        """The uncompressed size member `key` claims (what read() would inflate), without reading it."""
        info = self._members.get(key)
        if info is None:
            raise fail(self.where, self.path, f"has no array {key!r} (it holds {', '.join(self._members)})")
        return info.file_size

    def read(self, key: str, *, max_bytes: int | None = None, max_elements: int | None = None,
             max_text_bytes: int = MAX_UNICODE_BYTES) -> np.ndarray:
        info = self._members.get(key)
        if info is None:
            raise fail(self.where, self.path, f"has no array {key!r} (it holds {', '.join(self._members)})")

        def action():
            if info.compress_size > self._archive_size:
                raise DataError(f"member {info.filename} claims to be larger than the whole archive")
            if info.compress_type == zipfile.ZIP_STORED:
                if info.file_size != info.compress_size:
                    raise DataError(f"member {info.filename} has inconsistent sizes")
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                if info.file_size > info.compress_size * DEFLATE_MAX_RATIO + 1024:
                    raise DataError(f"member {info.filename} claims an impossible compression ratio")
            else:
                raise DataError(f"member {info.filename} uses compression method {info.compress_type}; "
                                "numpy writes only stored or deflated members")
            with self._zip.open(info) as stream:
                array = _read_npy_stream(stream, info.file_size, f"array {key!r}", max_bytes, max_elements,
                                         max_text_bytes)
                if stream.read(1):
                    raise DataError(f"member {info.filename} has trailing data")
            return array
        return guard(self.where, self.path, action)


# --------------------------------------------------------------------------- score and array files

def read_npz_named(path, key: str, *, where: str, what: str, error=DataError, **limits) -> np.ndarray:
    """The array `key` of an .npz, or its only array; more than one array without `key` is an `error` naming them."""
    with NpzReader(path, where=where) as npz:
        keys = npz.keys()
        name = key if key in keys else keys[0] if len(keys) == 1 else None
        if name is None:
            raise error(f"{where} {path}: .npz holds {', '.join(keys)}; name the {what} array '{key}'")
        return npz.read(name, **limits)


def read_array_file(path, *, where: str, max_elements: int | None = None,
                    max_bytes: int = MAX_ARRAY_FILE_BYTES) -> np.ndarray:
    """One numeric array from a .npy file, for score, label and index files, read without pickle.

    The header's declared shape is checked before anything is allocated: it must match the
    file's size exactly, hold at most `max_elements` elements (when given) and `max_bytes`
    bytes. Any other outcome is a DataError that starts with "{where} {path}:".
    """
    return read_npy(Path(path), where=where, max_bytes=max_bytes, max_elements=max_elements)


def read_npz_arrays(path, *, where: str, keys: Iterable[str] | None = None, max_elements: int | None = None,
                    max_bytes: int = MAX_ARRAY_FILE_BYTES) -> dict[str, np.ndarray]:
    """The arrays of a .npz file (all of them, or `keys`) as {name: array}, read without pickle.

    Before a byte is inflated, the members' declared sizes are checked: together at most
    `max_bytes` and at most what deflate can expand the file to (about 1000 times its size);
    each at most `max_elements` elements (when given). A key that is missing, a member that
    inflates beyond what it declared, a pickled (object) member or a damaged archive is a
    DataError that starts with "{where} {path}:".
    """
    path = Path(path)
    with NpzReader(path, where=where) as npz:
        wanted = npz.keys() if keys is None else list(keys)
        declared = sum(npz.declared_size(key) for key in wanted)
        limit = min(max_bytes, npz._archive_size * DEFLATE_MAX_RATIO + 1024)
        if declared > limit:
            raise fail(where, path, f"its arrays would inflate to {declared} bytes, more than the {limit} bytes "
                                     "accepted for a file of this size (a zip bomb, or not a score file)")
        return {key: npz.read(key, max_bytes=max_bytes, max_elements=max_elements) for key in wanted}
