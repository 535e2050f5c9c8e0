"""Output places checked before any work, and an audit folder that holds one whole run (locked, report.json last, with the hashes of what this run wrote)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import DataError, OutputError
from ..safe_read import read_json, sha256_regular
from .ownership import MARKER, OwnedFolder, check_apart, check_target_file, check_target_folder
from .resumable import ChunkStore, discard_chunks

REPORT = "report.json"
CHUNKS = "scores.chunks"
CSV_SIDECAR = "scores.csv.json"
# Everything a finished audit writes besides report.json (plots only where matplotlib is installed).
AUDIT_FILES = ("scores.npz", "attack.pt", "scores.csv", CSV_SIDECAR, "leakpro.json", "roc.png", "roc_log.png",
               "score_histogram.png", "threshold_scatter.png")
REPORT_FORMAT = "qmia-fast/report"
_REPORT_LIMIT = 64 << 20
_VERIFIED_FILE_LIMIT = 1 << 40


def spec_inputs(model=None, data=None, config_file=None, extra: Iterable[tuple[object, str]] = ()) -> list:
    """(path, what) of every file or folder a run reads: outputs are checked against them."""
    inputs = []
    if model is not None:
        inputs += [(model.path, "model"), (model.config, "model config")]
    if data is not None:
        inputs += [(data.path, "data"), (data.split, "split file"), (data.members, "members file")]
    inputs.append((config_file, "--config file"))
    return inputs + list(extra)


def check_writable_folder(folder: Path, option: str = "--out") -> None:
    """Raise OutputError unless `folder` is, or can be created as, a writable folder."""
    check_target_folder(Path(folder), option)


def check_output_file(path: Path, suffixes, option: str = "--out", overwrite: bool = True) -> None:
    """Raise OutputError unless `path` names a writable file with one of `suffixes` (before any work is done)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: use a file name ending in {', '.join(suffixes)}")
    check_target_file(path, option, overwrite, f" such as {path / ('scores' + suffixes[0])}")


def _is_our_report(path: Path) -> bool:
    try:
        report = read_json(path, _REPORT_LIMIT, "report")
    except DataError:
        return False
    return isinstance(report, dict) and report.get("format") == REPORT_FORMAT


class AuditFolder:
    """An audit's (or evaluate's) output folder.

    A finished run is a folder whose report.json lists its files with the sha256 of the bytes
    this run wrote. A new run into a finished folder needs overwrite=True; it takes the
    folder's lock (one run per folder), deletes report.json (the folder is then visibly
    unfinished) and the previous run's files (only those: the names it writes), writes the
    others, and report.json last. A kill at any moment leaves the old run, the new run, or a
    folder without report.json; never a report that describes other files than its own.
    """

    def __init__(self, path, overwrite: bool = False, option: str = "--out", files: Sequence[str] = AUDIT_FILES,
                 what: str = "audit"):
        self.what = what
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.option = option
        self.files = tuple(files)
        self.owner = OwnedFolder(self.path, option, "audit", [_literal(n) for n in (REPORT, *AUDIT_FILES)])

    @property
    def chunks(self) -> Path:
        return self.path / CHUNKS

    def owned(self) -> bool:
        return self.owner.owned() or _is_our_report(self.path / REPORT)

    def check(self, inputs: Iterable[tuple[object, str]] = ()) -> None:
        """Before any work: every output path usable, nothing replaced that is not ours or not asked for."""
        check_target_folder(self.path, self.option)
        outputs = [(self.path / name, self.option) for name in (REPORT, *self.files)] + [(self.chunks, self.option)]
        check_apart(outputs, inputs, places=[(self.path, self.option)])
        present = []
        for name in (REPORT, *AUDIT_FILES):
            file = self.path / name
            if os.path.lexists(file):
                if file.is_symlink() or not file.is_file():
                    raise OutputError(f"{self.option} {self.path}: {name} there is "
                                      f"{'a symbolic link' if file.is_symlink() else 'not a file'}; remove it or "
                                      "choose another folder")
                present.append(name)
        if present and not self.owned():
            raise OutputError(f"{self.option} {self.path} holds {', '.join(present[:3])} that qmia-fast did not "
                              "write; choose another folder (nothing of yours is replaced)")
        if (self.path / REPORT).exists() and not self.overwrite:
            raise OutputError(f"{self.option} {self.path} holds a finished {self.what} (report.json); pass "
                              "--overwrite to replace it, or choose another folder")
        if os.path.lexists(self.chunks):
            ChunkStore(self.chunks, {}, 0, 1, option=f"{self.option} {self.path}: its {CHUNKS}").check()

    def claim(self) -> "AuditFolder":
        """Create and lock the folder for this run (refused while another run holds it)."""
        self.owner.claim()
        return self

    def begin(self) -> None:
        """Mark the folder unfinished before anything of the new run is written over the old one."""
        self.claim()
        (self.path / REPORT).unlink(missing_ok=True)
        for name in AUDIT_FILES:
            (self.path / name).unlink(missing_ok=True)
        self.owner.remove_temporaries()

    def finish(self, report: dict, written: list[Path], note: str | None = None) -> Path:
        """Write report.json last, naming every file of the run with the hash of what this run wrote; drop the chunks."""
        from ..results.report import write_report_json

        path = write_report_json(self.path, report, written, note)
        discard_chunks(self.chunks)
        self.owner.release()
        return path

    def release(self) -> None:
        self.owner.release()


def verify_audit_folder(path) -> dict:
    """The report of a finished audit folder, after checking that it lists exactly the folder's files, each with its hash.

    Refused: no report.json, a report that is not a JSON object, a `files` entry that is
    missing, empty, not a mapping or lacks scores.npz, a name that is not a plain file name in
    the folder (../, a link), a file whose bytes differ from its hash, and a file in the
    folder that the report does not list.
    """
    folder = Path(path)
    report_path = folder / REPORT
    if not report_path.is_file():
        raise OutputError(f"{folder} holds no report.json: the run there is unfinished; rerun it")
    try:
        report = read_json(report_path, _REPORT_LIMIT, "report", OutputError)
    except OutputError as exc:
        raise OutputError(f"{exc}; rerun the audit") from None
    if not isinstance(report, dict):
        raise OutputError(f"{report_path} is not a report (a JSON object); rerun the audit")
    files = report.get("files")
    if not isinstance(files, dict) or not files:
        raise OutputError(f"{report_path} lists no files; it does not describe a finished run: rerun the audit")
    if "scores.npz" not in files:
        raise OutputError(f"{report_path} does not list scores.npz; rerun the audit")
    for name, entry in files.items():
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or name == REPORT:
            raise OutputError(f"{report_path} lists {name!r}, which is not a file name inside {folder}; "
                              "rerun the audit")
        file = folder / name
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if file.is_symlink() or not file.is_file() or not isinstance(expected, str):
            raise OutputError(f"{file} does not match the hash in {report_path}: the folder mixes two runs; "
                              "rerun the audit with --overwrite")
        if sha256_regular(file, "audit file", OutputError, limit=_VERIFIED_FILE_LIMIT) != expected:
            raise OutputError(f"{file} does not match the hash in {report_path}: the folder mixes two runs; "
                              "rerun the audit with --overwrite")
    unlisted = sorted(entry.name for entry in folder.iterdir() if entry.name not in files
                      and entry.name not in (REPORT, MARKER))
    if unlisted:
        raise OutputError(f"{folder} holds {', '.join(unlisted[:3])}{', ...' if len(unlisted) > 3 else ''}, which "
                          f"{report_path} does not list: the folder is not one run's; rerun the audit with "
                          "--overwrite into a folder of its own")
    return report


def _literal(name: str) -> str:
    import re

    return re.escape(name)
