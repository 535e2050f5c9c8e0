"""Which reader a data file needs (sniff_format), and the one import point for the readers: npy/npz, idx, CIFAR batches, image folders."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .arrays import MAX_ARRAY_FILE_BYTES, NPY_MAGIC, ZIP_MAGIC, NpzReader, read_array_file, read_npy, read_npz_arrays
from .cifar import cifar_rows_to_nchw, find_cifar_batches, read_cifar_batch
from .idx import IDX_DTYPES, find_idx_images, idx_labels_path, read_idx
from .image_decode import IMAGE_SUFFIXES
from .image_folder import list_image_files, read_image_folder
from .safe_read import open_regular_file

__all__ = [
    "sniff_format", "read_npy", "NpzReader", "read_idx", "find_idx_images", "idx_labels_path", "read_cifar_batch",
    "find_cifar_batches", "cifar_rows_to_nchw", "read_image_folder", "list_image_files", "IMAGE_SUFFIXES",
    "read_array_file", "read_npz_arrays", "open_regular_file", "MAX_ARRAY_FILE_BYTES",
]


def sniff_format(path: Path) -> str:
    """Guess a file's format from its name and first bytes: npy, npz, idx, cifar, json, txt or unknown."""
    name = path.name.lower()
    try:
        with open_regular_file(path) as fh:
            head = fh.read(8)
    except (OSError, DataError):
        head = b""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC) or name.endswith(".npz"):
        return "npz"
    if "idx" in name and "ubyte" in name:
        return "idx"
    if head[:2] == b"\x00\x00" and len(head) >= 4 and head[2] in IDX_DTYPES:
        return "idx"
    if head[:1] == b"\x80" or name.startswith(("data_batch", "test_batch")) or name in ("train", "test"):
        return "cifar"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".txt", ".csv")):
        return "txt"
    return "unknown"
