"""Atomic file output: write to a temporary file in the same folder, then rename over the final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import OutputError

# What this process wrote under each final name: (sha256, bytes) of the bytes it renamed there. A report
# lists these, not what is on disk when it is written, so a file another process put in its place since
# is caught by verification instead of being listed as this run's.
_WRITTEN: dict[str, tuple[str, int]] = {}


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync and rename it over `final`.

    A crash or kill at any point leaves either the old file or the new one under the
    final name, never a half-written file. The temporary keeps the final suffix so
    that libraries which pick a format by extension (numpy, matplotlib) behave. A failed
    write (full disk, no permission, a folder in the way) is an OutputError naming the path.
    """
    final = Path(final)
    suffix = final.suffix if suffix is None else suffix
    tmp_path = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_dir():
            raise OutputError(f"{final} is a folder; choose a file name for this output")
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
        # mkstemp makes the file private (0600); outputs get the permissions a plain open() would give.
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
            digest, size = _digest(fh)
        os.replace(tmp_path, final)
        _WRITTEN[_key(final)] = (digest, size)
        _fsync_dir(final.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}; free disk space, fix the permissions "
                          "or choose another output path") from None
    except RuntimeError as exc:
        # torch.save reports a failed write (e.g. a full disk) as a RuntimeError from its zip writer.
        if "PytorchStreamWriter" not in str(exc) and "file write failed" not in str(exc):
            raise
        raise OutputError(f"cannot write {final}: {' '.join(str(exc).split())}; free disk space or choose "
                          "another output path") from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def written_digest(path: str | os.PathLike) -> tuple[str, int] | None:
    """(sha256, bytes) of what this process last wrote to `path` through atomic_path, or None."""
    return _WRITTEN.get(_key(Path(path)))


def remove_stale_temporaries(final: str | os.PathLike) -> None:
    """Delete the temporaries that a killed atomic write of `final` left beside it (.NAME.xxxxxxxx.tmpSUFFIX).

    Call it only where no other process writes `final` at the same time (the folder's run lock).
    """
    final = Path(final)
    pattern = re.compile(r"\." + re.escape(final.name) + r"\.[a-z0-9_]{8}\.tmp" + re.escape(final.suffix))
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)


def _key(path: Path) -> str:
    return os.path.join(os.path.realpath(path.parent), path.name)


def _digest(handle) -> tuple[str, int]:
    handle.seek(0)
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


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


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
