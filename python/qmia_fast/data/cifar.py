"""CIFAR-10/100 python batches: finding a folder's batch files in SecMI's order and reading each with the restricted unpickler."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .safe_pickle import materialize_array, safe_unpickle
from .safe_read import fail, guard, open_regular_file

__all__ = ["find_cifar_batches", "read_cifar_batch", "cifar_rows_to_nchw"]


_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_LAYOUTS = {
    "cifar-10": {"train": _CIFAR10_TRAIN, "test": ["test_batch"]},
    "cifar-100": {"train": ["train"], "test": ["test"]},
}


def find_cifar_batches(folder: Path, part: str) -> tuple[str, list[Path]] | None:
    """(dataset name, batch files of `part`) for a CIFAR-10/100 python folder or a root holding one."""
    for candidate in (folder, folder / "cifar-10-batches-py", folder / "cifar-100-python"):
        if not candidate.is_dir():
            continue
        if (candidate / "data_batch_1").is_file():
            name = "cifar-10"
        elif (candidate / "train").is_file() and (candidate / "meta").is_file():
            name = "cifar-100"
        else:
            continue
        parts = ["train", "test"] if part == "all" else [part]
        files = [candidate / f for p in parts for f in _CIFAR_LAYOUTS[name][p]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            # SecMI's indices assume all five training batches in order; a partial set would
            # silently shift them.
            raise DataError(f"--data {candidate}: {name} folder is missing {', '.join(missing)}")
        return name, files
    return None


def read_cifar_batch(path: Path, *, where: str = "--data") -> tuple[np.ndarray, np.ndarray | None]:
    """Read one CIFAR python batch with the restricted unpickler: (raw image array, labels or None).

    The image array is returned as stored (N x 3072 rows, or an N x ... image array written by
    another tool); the caller reshapes and validates it.
    """
    def action():
        with open_regular_file(path) as handle:
            raw = handle.read()
        batch = safe_unpickle(raw)
        if not isinstance(batch, dict):
            raise DataError(f"is a pickle of a {type(batch).__name__}, not a CIFAR batch dict")
        # Original batches are Python 2 pickles (str keys under latin1); re-dumped ones may use bytes keys.
        fields = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
        data = materialize_array(fields.get("data"))
        if data is None:
            raise DataError("is not a CIFAR batch: it has no 'data' array")
        labels = None
        for key in ("labels", "fine_labels"):
            if key in fields:
                labels = materialize_array(fields[key])
                if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu":
                    raise DataError(f"CIFAR batch field {key!r} is not a list of integers")
                break
        return data, labels
    return guard(where, path, action)


def cifar_rows_to_nchw(data: np.ndarray, *, where: str, path) -> tuple[np.ndarray, str]:
    """CIFAR rows (N x 3*S*S, channel planes then rows) to N x 3 x S x S; other shapes pass through."""
    if data.ndim != 2:
        return data, ""
    n, row = data.shape
    side = int(round((row / 3) ** 0.5)) if row > 0 else 0
    if side == 0 or 3 * side * side != row:
        raise fail(where, path, f"CIFAR 'data' rows have {row} values, not 3 x S x S colour planes")
    return data.reshape(n, 3, side, side), "CIFAR rows as 3 colour planes"
