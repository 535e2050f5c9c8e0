"""What a path that is not a regular file is, in the words an error message uses (data and model readers share it)."""
from __future__ import annotations

import stat


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', 'a socket', 'a device' or 'a special file' for an st_mode."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
