"""Output places checked before any work, and an audit folder that always holds one whole run (report.json last, with the other files' hashes)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..atomic_io import sha256_file
from ..errors import OutputError

REPORT = "report.json"
CHUNKS = "scores.chunks"
# Everything a finished audit writes besides report.json (plots only where matplotlib is installed).
AUDIT_FILES = ("scores.npz", "attack.pt", "scores.csv", "leakpro.json", "roc.png", "roc_log.png",
               "score_histogram.png", "threshold_scatter.png")


def check_writable_folder(folder: Path, option: str = "--out") -> None:
    """Raise OutputError unless `folder` is, or can be created as, a writable folder."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} exists and is not a folder; choose a folder name")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {folder}: {existing} is a file, so the folder cannot be made; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {folder}: {existing} is not writable; choose a folder you can write to")


def check_output_file(path: Path, suffixes, option: str = "--out") -> None:
    """Raise OutputError unless `path` names a writable file with one of `suffixes` (before any work is done)."""
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{option} {path}: use a file name ending in {', '.join(suffixes)}")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name such as {path / ('scores' + suffixes[0])}")
    check_writable_folder(path.parent if str(path.parent) else Path("."), option)


class AuditFolder:
    """An audit's output folder.

    A finished run is a folder whose report.json lists its files with their sha256. A new
    run into a finished folder needs overwrite=True; it first deletes report.json (the
    folder is then visibly unfinished), writes the other files, and writes report.json
    last. So a kill at any moment leaves either the old run, the new run, or a folder
    without report.json, never a report that describes other files than its own.
    """

    def __init__(self, path, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = bool(overwrite)

    @property
    def chunks(self) -> Path:
        return self.path / CHUNKS

    def check(self) -> None:
        """Before any work: the folder is usable, and a finished audit there is replaced only when asked."""
        check_writable_folder(self.path)
        if (self.path / REPORT).exists() and not self.overwrite:
            raise OutputError(f"--out {self.path} holds a finished audit (report.json); pass --overwrite to "
                              "replace it, or choose another --out folder")

    def begin(self) -> None:
        """Mark the folder unfinished before anything of the new run is written over the old one."""
        self.path.mkdir(parents=True, exist_ok=True)
        report = self.path / REPORT
        if report.exists():
            report.unlink()
        for name in AUDIT_FILES:
            (self.path / name).unlink(missing_ok=True)

    def finish(self, report: dict, written: list[Path], note: str | None = None) -> Path:
        """Write report.json last, naming every file of the run with its sha256; drop the score chunks."""
        from ..results.report import write_report_json

        path = write_report_json(self.path, report, written, note)
        shutil.rmtree(self.chunks, ignore_errors=True)
        return path


def verify_audit_folder(path) -> dict:
    """The report of a finished audit folder, after checking that every file it lists has its recorded hash."""
    folder = Path(path)
    report_path = folder / REPORT
    if not report_path.is_file():
        raise OutputError(f"{folder} holds no report.json: the audit there is unfinished; rerun it")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{report_path} is unreadable ({exc}); rerun the audit") from None
    for name, entry in (report.get("files") or {}).items():
        file = folder / name
        if not file.is_file() or sha256_file(file) != entry.get("sha256"):
            raise OutputError(f"{file} does not match the hash in {report_path}: the folder mixes two runs; "
                              "rerun the audit with --overwrite")
    return report
