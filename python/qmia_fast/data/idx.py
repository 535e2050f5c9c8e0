"""MNIST / Fashion-MNIST idx files (gzipped or not): bounded reading, finding a folder's image files and their labels files."""
from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import DataError
from .safe_pickle import checked_element_count
from .arrays import DEFLATE_MAX_RATIO
from .safe_read import guard, open_regular_file, read_exact, readinto_exact

__all__ = ["IDX_DTYPES", "read_idx", "find_idx_images", "idx_labels_path"]

_GZIP_MAGIC = b"\x1f\x8b"


IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_IMAGES = re.compile(r"^(train|t10k)-images[.-]idx3-ubyte(\.gz)?$")


def read_idx(path: Path, *, where: str = "--data") -> np.ndarray:
    """Read an idx file (gzipped or not), checking the declared dimensions against the data size."""
    def action():
        with open_regular_file(path) as raw:
            file_size = os.fstat(raw.fileno()).st_size
            if raw.read(2) != _GZIP_MAGIC:
                raw.seek(0)
                return _read_idx_stream(raw, file_size, None)
            # ISIZE, the gzip trailer, is the uncompressed length mod 2**32: checking the header
            # against it before allocating stops a corrupt dimension from claiming gigabytes.
            if file_size < 18:
                raise DataError("gzip file is truncated")
            raw.seek(file_size - 4)
            (isize,) = struct.unpack("<I", raw.read(4))
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                array = _read_idx_stream(stream, isize, file_size)
                if stream.read(1):
                    raise DataError("gzip stream holds data after the declared array")
            return array
    return guard(where, path, action)


def _read_idx_stream(stream, size_or_isize: int, gzip_file_size: int | None) -> np.ndarray:
    magic = read_exact(stream, 4, "idx header")
    if magic[:2] != b"\x00\x00" or magic[2] not in IDX_DTYPES or not 1 <= magic[3] <= 4:
        raise DataError(f"not an idx file (magic bytes {magic.hex()})")
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    dims = struct.unpack(f">{ndim}I", read_exact(stream, 4 * ndim, "idx header"))
    count = checked_element_count(dims, dtype.itemsize, "idx header")
    total = 4 + 4 * ndim + count * dtype.itemsize
    if gzip_file_size is None:
        if total != size_or_isize:
            raise DataError(f"idx header declares {' x '.join(map(str, dims))} {dtype.name} "
                            f"({total} bytes) but the file has {size_or_isize} bytes (truncated or corrupt)")
    elif total % (1 << 32) != size_or_isize or total > gzip_file_size * DEFLATE_MAX_RATIO + 1024:
        raise DataError(f"idx header declares {' x '.join(map(str, dims))} {dtype.name} ({total} bytes) "
                        "but the gzip stream does not hold that much (truncated or corrupt)")
    flat = np.empty(count, dtype=dtype)
    readinto_exact(stream, flat, "idx data")
    return flat.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def _idx_folder_candidates(folder: Path) -> list[Path]:
    return [folder, folder / "raw"]


def find_idx_images(folder: Path, part: str) -> list[Path]:
    """The idx image files of `part` ('train', 'test' or 'all' = train then test) in `folder` or `folder/raw`."""
    for candidate in _idx_folder_candidates(folder):
        if not candidate.is_dir():
            continue
        found: dict[str, Path] = {}
        for entry in sorted(candidate.iterdir(), key=lambda p: (p.name.endswith(".gz"), p.name)):
            match = _IDX_IMAGES.match(entry.name)
            if match and entry.is_file():
                found.setdefault(match.group(1), entry)  # uncompressed first: it reads faster
        if found:
            wanted = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[part]
            missing = [w for w in wanted if w not in found]
            if missing:
                raise DataError(f"--data {folder}: no {missing[0]}-images-idx3-ubyte[.gz] file for part={part!r}")
            return [found[w] for w in wanted]
    return []


def idx_labels_path(images_path: Path) -> Path | None:
    """The labels file next to an idx images file (train-images-idx3-ubyte -> train-labels-idx1-ubyte)."""
    name = images_path.name
    if "images" not in name or "idx3" not in name:
        return None
    label_name = name.replace("images", "labels").replace("idx3", "idx1")
    for candidate in (label_name, label_name[:-3] if label_name.endswith(".gz") else label_name + ".gz"):
        path = images_path.with_name(candidate)
        if path.is_file():
            return path
    return None
