"""The one rule for what qmia-fast may delete or overwrite: only files it wrote, in folders it marked, never an input."""
from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import OutputError
from ..file_kinds import file_kind
from ..safe_read import is_within
from .run_lock import RunLock

# In every folder qmia-fast writes into: says the folder's qmia-fast files are its own (and whether it made
# the folder), and is the run lock. Files that are not qmia-fast's are never deleted, whatever the folder.
MARKER = ".qmia-fast"
_MARKER_LIMIT = 4096


def marker(folder: Path) -> dict | None:
    """The marker's content ({} when unreadable) if `folder` holds a marker file, else None."""
    path = Path(folder) / MARKER
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        with open(path, "rb") as handle:
            content = json.loads(handle.read(_MARKER_LIMIT).decode())
        return content if isinstance(content, dict) else {}
    except (OSError, ValueError):
        return {}


def check_target_folder(folder: Path, option: str) -> None:
    """Before work: `folder` is, or can be made as, a real folder this user can write into.

    Refused: a file, a symbolic link (whose target would be written into), a path under a file,
    a folder that cannot be written (a read-only mount, /proc). Nothing is created.
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise OutputError(f"{option} {folder} is a symbolic link; qmia-fast writes only into real folders: "
                          "remove the link or give the folder it points to")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} exists and is not a folder ({_kind(folder)}); choose a folder name")
    existing = folder
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {folder}: {existing} is a file, so the folder cannot be made; choose another path")
    _probe(existing, folder, option)


def check_target_file(path: Path, option: str, overwrite: bool, what: str = "") -> None:
    """Before work: `path` can be written as a file; an existing one is replaced only with overwrite=True."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{option} {path} is a symbolic link; remove it or give another file name")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name{what}")
    if os.path.lexists(path):
        if not path.is_file():
            raise OutputError(f"{option} {path} is {_kind(path)}, not a file; choose another name")
        if not overwrite:
            raise OutputError(f"{option} {path} exists; pass --overwrite to replace it, or choose another name")
    check_target_folder(path.parent if str(path.parent) else Path("."), option)


def check_apart(outputs: Sequence[tuple[Path, str]], inputs: Iterable[tuple[object, str]],
                places: Sequence[tuple[Path, str]] = ()) -> None:
    """No output may be an input or lie inside an input folder, and no output folder may hold an input.

    outputs: (file or tool-owned folder, option) that will be written or replaced as a whole;
    places: (folder, option) that files are written into (an audit's --out): refused only when it
    is, or lies inside, an input folder. inputs: (path, what); 'builtin', None and paths that do
    not exist are skipped (the loaders report those).
    """
    present = []
    for path, what in inputs:
        if path is None or not isinstance(path, (str, os.PathLike)) or str(path) == "builtin":
            continue
        if os.path.exists(path):
            present.append((Path(path), what, os.path.isdir(path)))
    for out, option in list(outputs) + list(places):
        for path, what, is_folder in present:
            if is_within(out, path) and (is_folder or os.path.realpath(out) == os.path.realpath(path)):
                where = "is" if os.path.realpath(out) == os.path.realpath(path) else "lies inside"
                raise OutputError(f"{option} {out} {where} the {what} {path}; an output must never replace or "
                                  "sit among the inputs: choose an output path outside them")
    for out, option in outputs:
        if os.path.isdir(out):
            for path, what, _ in present:
                if is_within(path, out):
                    raise OutputError(f"{option} {out} holds the {what} {path}; choose an output path outside "
                                      "the inputs")


class OwnedFolder:
    """A folder qmia-fast writes into: marked as its own, locked for one run, cleaned of only its own files.

    A folder is taken only if it is new, empty, or already marked (or written by an earlier
    release, as `legacy` says); `files` are the name patterns of what qmia-fast writes there.
    """

    def __init__(self, path, option: str, kind: str, files: Sequence[str], legacy: str | None = None):
        self.path = Path(path)
        self.option = option
        self.kind = kind
        self.files = [re.compile(pattern) for pattern in files]
        self.legacy = legacy
        self.lock = RunLock(self.path / MARKER, option)

    def owned(self) -> bool:
        return marker(self.path) is not None or (self.legacy is not None and (self.path / self.legacy).exists())

    def ours(self, name: str) -> bool:
        return name == MARKER or any(pattern.fullmatch(name) for pattern in self.files) or _temporary(name, self.files)

    def check(self, foreign_ok: bool = False) -> None:
        """Before work: usable, and (unless foreign_ok) holding nothing but qmia-fast's own files."""
        check_target_folder(self.path, self.option)
        if not self.path.is_dir() or self.owned() or foreign_ok:
            return
        others = sorted(p.name for p in self.path.iterdir())
        if others:
            raise OutputError(f"{self.option} {self.path} holds files qmia-fast did not write ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); give a new or empty folder")

    def claim(self) -> "OwnedFolder":
        """Create the folder if needed, mark it and take its lock (OutputError if another run holds it)."""
        self.check(foreign_ok=True)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.option} {self.path}: cannot create the folder ({exc.strerror or exc}); "
                              "choose a writable path") from None
        previous = marker(self.path)
        if previous is not None:
            made = previous.get("created", False)
        else:  # a folder an earlier release wrote (its manifest, no marker) was made by the tool too
            made = created or (self.legacy is not None and (self.path / self.legacy).exists())
        self.lock.acquire({"tool": "qmia-fast", "kind": self.kind, "created": bool(made)})
        return self

    def remove_own_files(self, keep: Sequence[str] = ()) -> None:
        """Delete the files of ours in the folder (their patterns, and stale temporaries of them), nothing else."""
        if not self.path.is_dir() or not self.owned():
            return
        for entry in self.path.iterdir():
            if entry.name == MARKER or entry.name in keep or not self.ours(entry.name):
                continue
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Delete what killed atomic writes of our files left behind (.NAME.xxxxxxxx.tmpSUFFIX)."""
        if not self.path.is_dir() or not self.owned():
            return
        for entry in self.path.iterdir():
            if _temporary(entry.name, self.files) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete our files, then the marker, then the folder if we made it and nothing else is left in it."""
        if not self.path.is_dir() or not self.owned():
            return
        content = marker(self.path)
        made = content.get("created", False) if content is not None else True  # no marker: an earlier release's
        self.remove_own_files()
        (self.path / MARKER).unlink(missing_ok=True)
        self.lock.release()
        if made:
            try:
                self.path.rmdir()
            except OSError:
                pass  # something that is not ours is left in it: the folder stays

    def release(self) -> None:
        self.lock.release()


def _temporary(name: str, patterns) -> bool:
    # atomic_io's temporaries: "." + final name + "." + 8 random characters + ".tmp" + final suffix.
    match = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp(\.[^.]*)?", name)
    return bool(match) and any(p.fullmatch(match.group(1)) for p in patterns)


def _probe(existing: Path, folder: Path, option: str) -> None:
    # Permission bits do not say everything (root, read-only mounts, /proc): try to create a file.
    try:
        fd, probe = tempfile.mkstemp(prefix=".qmia-fast-probe.", dir=existing)
    except OSError as exc:
        raise OutputError(f"{option} {folder}: cannot write in {existing} ({exc.strerror or exc}); choose a folder "
                          "you can write to") from None
    os.close(fd)
    os.unlink(probe)


def _kind(path: Path) -> str:
    try:
        return file_kind(os.lstat(path).st_mode) if not Path(path).is_file() else "a file"
    except OSError:
        return "unreadable"
