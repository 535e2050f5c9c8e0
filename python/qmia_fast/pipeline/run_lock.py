"""One run per folder: an exclusive, non-blocking lock on the folder's marker file, released when the process ends."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import OutputError

try:  # POSIX; elsewhere runs are not locked (and README says so)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

# Locks this process holds, by path: a second RunLock on a held path shares it (a flock taken twice by one
# process through two descriptors would refuse the process itself). [descriptor, holders]
_HELD: dict[str, list[int]] = {}


class RunLock:
    """An exclusive lock on `path` (a marker file qmia-fast owns), taken without waiting.

    The operating system drops the lock when the process ends, however it ends, so a
    kill -9 never leaves a folder locked. A second run that finds the lock held is refused
    with the holder's process id; it never waits and never writes.
    """

    def __init__(self, path: str | os.PathLike, option: str = "--out"):
        self.path = Path(path)
        self.option = option
        self._fd: int | None = None
        self._held_key = ""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _key(self) -> str:
        return os.path.join(os.path.realpath(self.path.parent), self.path.name)

    def acquire(self, content: dict) -> "RunLock":
        """Take the lock (creating the marker file), then record `content` and this process id in it."""
        if self._fd is not None:
            return self
        self._held_key = self._key()
        shared = _HELD.get(self._held_key)
        if shared is not None:
            shared[1] += 1
            self._fd = shared[0]
            return self
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as exc:
                raise OutputError(f"{self.option} {self.path.parent}: cannot create {self.path.name} "
                                  f"({exc.strerror or exc}); choose a folder you can write to") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _holder(fd)
                    os.close(fd)
                    raise OutputError(f"{self.option} {self.path.parent}: another qmia-fast run is writing into it"
                                      + (f" (process {holder})" if holder else "")
                                      + "; wait for it to finish or choose another folder") from None
            # The file may have been removed and re-created by the run that held it, between our open and
            # our lock: then we hold a lock on a name nobody sees. Take the lock on the current file instead.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                _HELD[self._held_key] = [fd, 1]
                payload = json.dumps({**content, "pid": os.getpid()}).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, payload, 0)
                return self
            os.close(fd)
        raise OutputError(f"{self.option} {self.path.parent}: its lock file keeps changing; another run is "
                          "using the folder: wait for it or choose another folder")

    def release(self) -> None:
        if self._fd is None:
            return
        shared = _HELD.get(self._held_key)
        if shared is not None and shared[0] == self._fd:
            shared[1] -= 1
            if shared[1] > 0:
                self._fd = None
                return
            del _HELD[self._held_key]
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _holder(fd: int) -> int | None:
    try:
        data = os.pread(fd, 4096, 0)
        pid = json.loads(data.decode()).get("pid")
        return int(pid) if isinstance(pid, int) else None
    except (OSError, ValueError, AttributeError):
        return None
