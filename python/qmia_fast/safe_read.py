"""Reading files another process or person may have changed: regular files only, bytes and JSON depth capped, never pickle."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Type

from .errors import DataError, QmiaError

# A JSON file the package reads back (a manifest, a report, a cache entry, a sidecar) holds settings
# and numbers; deeper nesting than this is not one of ours.
MAX_JSON_DEPTH = 64


def read_bytes(path, limit: int, what: str, error: Type[QmiaError] = DataError) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; a FIFO, device, folder or bigger file is `error`.

    The size is judged on the opened file (fstat) and the read stops at limit + 1 bytes, so a
    file that grows while it is read, or a link to /dev/zero, can neither hang nor fill memory.
    """
    try:
        with _open(path, what, error) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise error(f"{what} {path} is {size} bytes, more than the {limit} such a file can hold; "
                            "it is not one qmia-fast wrote: remove it or choose another path")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc}); check the path and its permissions") \
            from None
    if len(data) > limit:
        raise error(f"{what} {path} grew beyond {limit} bytes while being read; remove it or choose another path")
    return data


def json_loads(text: str, error: Type[QmiaError], too_deep: str, invalid: Callable[[ValueError], str]) -> Any:
    """json.loads, a document nested beyond the parser's stack raised as error(too_deep), a malformed one as
    error(invalid(exc)); the traceback is dropped, since the message says all a user can act on."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(too_deep) from None
    except ValueError as exc:
        raise error(invalid(exc)) from None


def parse_json(data: bytes | str, what: str, error: Type[QmiaError] = DataError) -> Any:
    """JSON from bytes or text, with nesting capped: a malformed or absurdly deep document is `error`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8 text; re-create it") from None
    value = json_loads(text, error, f"{what} is nested too deeply to be valid JSON; re-create it",
                       lambda exc: f"{what} is not valid JSON ({exc}); re-create it")
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep; it is not one qmia-fast wrote")
    return value


def read_json(path, limit: int, what: str, error: Type[QmiaError] = DataError) -> Any:
    """A JSON document from the regular file `path` (at most `limit` bytes, nesting capped)."""
    return parse_json(read_bytes(path, limit, what, error), f"{what} {path}", error)


def sha256_regular(path, what: str, error: Type[QmiaError] = DataError, limit: int | None = None) -> str:
    """sha256 of a regular file's bytes, streamed; anything but a regular file (or a file over `limit`) is `error`."""
    digest = hashlib.sha256()
    try:
        with _open(path, what, error) as handle:
            size = os.fstat(handle.fileno()).st_size
            if limit is not None and size > limit:
                raise error(f"{what} {path} is {size} bytes, more than the {limit} expected")
            read = 0
            for block in iter(lambda: handle.read(1 << 20), b""):
                read += len(block)
                if limit is not None and read > limit:
                    raise error(f"{what} {path} grew beyond {limit} bytes while being read")
                digest.update(block)
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _open(path, what: str, error: Type[QmiaError]):
    """open_regular_file with its refusals (a FIFO, a device, a folder) worded as `error` naming `what` and `path`."""
    # Imported here: the data package's readers import this module, so it must not import them first.
    from .data.safe_read import open_regular_file

    try:
        return open_regular_file(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a regular file; remove it or choose another path") from None
    except QmiaError as exc:
        raise error(f"{what} {path} {exc}") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({exc.strerror or exc}); check the path and its permissions") \
            from None


def _depth(value: Any) -> int:
    # Iterative, so that measuring a deep document cannot itself overflow the stack.
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
        if deepest > MAX_JSON_DEPTH:
            break
    return deepest


def is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it, after resolving links (of the parts that exist)."""
    child, parent = os.path.realpath(path), os.path.realpath(folder)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)
