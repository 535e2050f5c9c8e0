"""Reading untrusted files safely: regular files only, size caps before reading, and one guard that turns any parser failure into a one-line DataError."""
from __future__ import annotations

import io
import os
import stat

import numpy as np

from ..errors import DataError, QmiaError
from ..file_kinds import file_kind

__all__ = ["open_regular_file", "read_capped_bytes", "read_capped_text", "decode_text", "guard", "fail", "read_exact",
           "readinto_exact", "describe"]

_READ_CHUNK = 1 << 24


def fail(where: str, path, message: str) -> DataError:
    return DataError(f"{where} {path}: {message}")


def read_exact(stream, count: int, what: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise DataError(f"file ends inside the {what} (truncated)")
    return data


def readinto_exact(stream, array: np.ndarray, what: str) -> None:
    view = memoryview(array.reshape(-1).view(np.uint8))
    filled = 0
    total = len(view)
    while filled < total:
        got = stream.readinto(view[filled:filled + _READ_CHUNK])
        if not got:
            raise DataError(f"file ends inside the {what} after {filled} of {total} bytes (truncated)")
        filled += got


def open_regular_file(path) -> "io.BufferedReader":
    """Open `path` for binary reading only if it is a regular file; a FIFO, socket or device is a DataError.

    Opening with O_NONBLOCK returns at once even for a FIFO without a writer, and fstat then
    judges the very file that was opened, so nothing can swap it in between.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"is {file_kind(mode)}, not a regular file; only regular files are read "
                            "(remove it or pass a file on disk)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped_bytes(path, max_bytes: int, *, where: str, what: str = "file") -> bytes:
    """The whole of a regular file of at most `max_bytes` bytes, or a DataError "{where} {path}: ..."."""
    def action():
        try:
            handle = open_regular_file(path)
        except FileNotFoundError:
            raise DataError("no such file") from None
        except PermissionError:
            raise DataError("cannot be read (permission denied); check its permissions") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise DataError(f"is {size} bytes, more than the {max_bytes} bytes a {what} may have; "
                                "pass the right file or split it")
            # Read what fstat promised (read(n) allocates n bytes up front, so never the cap itself);
            # a file that is still being written is refused rather than read in part.
            data = handle.read(size)
            if len(data) != size or handle.read(1):
                raise DataError("changed size while it was read; pass a finished file")
            return data
    return guard(where, path, action)


def read_capped_text(path, max_bytes: int, *, where: str, what: str = "file") -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped) read through read_capped_bytes."""
    return decode_text(read_capped_bytes(path, max_bytes, where=where, what=what), where=where, path=path)


def decode_text(data: bytes, *, where: str, path) -> str:
    """UTF-8 bytes (a leading byte-order mark dropped) as str, or a DataError naming the first bad byte's line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise fail(where, path, f"is not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8") from None


def guard(where: str, path, action):
    """Run action(); its DataErrors gain the "{where} {path}: " prefix and any other failure becomes one."""
    # Library parsers (zipfile, gzip, ast, Pillow, csv, json) raise a zoo of exception types on
    # corrupt input; every one of them means "this file is damaged" to the user.
    try:
        return action()
    except QmiaError as exc:
        if str(exc).startswith(f"{where} "):
            raise
        raise type(exc)(f"{where} {path}: {exc}") from None
    except RecursionError:
        raise fail(where, path, "file is nested too deeply to be valid") from None
    except MemoryError:
        # Declared sizes are checked against the file before allocating, so this is a real shortage.
        raise fail(where, path, "not enough memory to load it; free memory or load a smaller subset") from None
    except Exception as exc:  # noqa: BLE001
        raise fail(where, path, f"file is corrupt or truncated ({describe(exc)}); re-download or "
                                "re-create it") from None


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
