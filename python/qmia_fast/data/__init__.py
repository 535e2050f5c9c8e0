"""The user's images, who is a member and each image's condition: readers for every data format, splits, labels, captions and load_data."""
from __future__ import annotations

from .loader import BUILTIN_DATA, FORMATS, PARTS, LoadedData, load_data, save_data
from .labels import check_labels, read_labels_file
from .captions import read_captions
from .layout import resolve_layout, to_uint8_nchw
from .split import (
    Split, load_split, partition_nonmembers, read_index_file, save_split, split_from_members, split_from_secmi,
)

__all__ = [
    "load_data", "LoadedData", "save_data", "BUILTIN_DATA", "FORMATS", "PARTS", "to_uint8_nchw",
    "resolve_layout", "Split", "load_split", "save_split", "split_from_secmi", "split_from_members",
    "partition_nonmembers", "read_index_file", "check_labels", "read_labels_file", "read_captions",
]
