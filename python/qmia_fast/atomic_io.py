"""Atomic file output: write to a temporary file in the same folder, then rename over the final name."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync and rename it over `final`.

    A crash or kill at any point leaves either the old file or the new one under the
    final name, never a half-written file. The temporary keeps the final suffix so
    that libraries which pick a format by extension (numpy, matplotlib) behave.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = final.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    # mkstemp makes the file private (0600); outputs get the permissions a plain open() would give.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk for the new name to survive a power cut.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: str | os.PathLike, text: str) -> None:
    write_bytes(final, text.encode("utf-8"))


def write_json(final: str | os.PathLike, obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_npy(final: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(final, suffix=".npy") as tmp:
        np.save(tmp, array)


def save_npz(final: str | os.PathLike, compressed: bool = False, **arrays) -> None:
    import numpy as np

    with atomic_path(final, suffix=".npz") as tmp:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
