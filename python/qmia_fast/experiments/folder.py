"""An experiment's output folder: checked before work, one run at a time, earlier results replaced only with --overwrite, never a file that is not ours."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import OutputError
from ..pipeline.ownership import OwnedFolder, check_apart, check_target_folder
from ..safe_read import read_json
from .cache import cache_folder

RESULTS, REPORT, CACHE = "results.json", "report.md", "cache"
_RESULTS_FORMAT = "qmia-fast/experiments"
_RESULTS_LIMIT = 64 << 20


class ExperimentFolder:
    """OUT of `qmia-fast experiment`: report.md, results.json, the figures it lists, cache/ and targets/.

    A folder with an earlier experiment's results is refused unless overwrite=True, or unless it
    is the unfinished run of the same command (a killed run resumes). With overwrite, the old
    report, results and the figures its results.json lists are deleted; the cache is kept, because
    its entries are keyed by everything that decides them and sealed, so only exact matches are
    reused. A report.md or results.json that qmia-fast did not write, or a cache/ that is not
    qmia-fast's, is never replaced or written into, with or without overwrite.
    """

    def __init__(self, out: Path, overwrite: bool, command: str):
        self.path = Path(out)
        self.overwrite = bool(overwrite)
        self.command = command
        self.owner = OwnedFolder(self.path, "--out", "experiment", [r"report\.md", r"results\.json", r"[^/]+\.png"])
        self.cache = cache_folder(self.path / CACHE)

    def _previous(self) -> dict | None:
        path = self.path / RESULTS
        if not os.path.lexists(path):
            return None
        try:
            results = read_json(path, _RESULTS_LIMIT, "experiment results", OutputError)
        except OutputError:
            return {}
        return results if isinstance(results, dict) and results.get("format") == _RESULTS_FORMAT else {}

    def check(self, inputs: Iterable[tuple[object, str]] = ()) -> None:
        """Before any work: usable paths, and nothing replaced that was not asked for."""
        check_target_folder(self.path, "--out")
        check_apart([(self.path / REPORT, "--out"), (self.path / RESULTS, "--out"), (self.path / CACHE, "--out")],
                    inputs, places=[(self.path, "--out")])
        for name in (REPORT, RESULTS):
            file = self.path / name
            if os.path.lexists(file) and (file.is_symlink() or not file.is_file()):
                raise OutputError(f"--out {self.path}: {name} there is not a file; remove it or choose another folder")
        previous = self._previous()
        foreign = previous == {} or (previous is None and (self.path / REPORT).exists())
        if foreign:
            raise OutputError(f"--out {self.path} holds a report.md or results.json that qmia-fast did not write; "
                              "choose another folder (nothing of yours is replaced, even with --overwrite)")
        if previous and not self.overwrite:
            resuming = not previous.get("complete") and previous.get("command") == self.command
            if not resuming:
                raise OutputError(f"--out {self.path} holds the results of an earlier experiment run "
                                  f"({previous.get('command', '?')!s:.80}); pass --overwrite to replace them, or "
                                  "choose another folder")
        self.cache.check()

    def claim(self) -> "ExperimentFolder":
        """Lock the folder for this run; with overwrite, remove the earlier run's report, results and figures."""
        self.owner.claim()
        if self.overwrite:
            previous = self._previous() or {}
            for entry in (previous.get("experiments") or {}).values():
                figures = entry.get("figures") if isinstance(entry, dict) else None
                for name in figures if isinstance(figures, list) else []:
                    file = self.path / str(name)
                    if Path(str(name)).name == name and name.endswith(".png") and file.is_file() \
                            and not file.is_symlink():
                        file.unlink()
            for name in (REPORT, RESULTS):
                (self.path / name).unlink(missing_ok=True)
        self.owner.remove_temporaries()
        self.cache.claim()
        return self

    def release(self) -> None:
        self.cache.release()
        self.owner.release()


__all__ = ["ExperimentFolder"]
