"""verify_audit_folder: a folder passes only if report.json lists exactly its files, each with the hash of the bytes the run wrote."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qmia_fast.errors import OutputError
from qmia_fast.pipeline import verify_audit_folder
from qmia_fast.results import report


@pytest.fixture
def folder(tmp_path):
    labels = np.repeat([1, 0], 20)
    scores = np.linspace(0, 1, 40)
    built = report.build_report({"scores": (scores, None)}, labels)
    report.write_report(tmp_path / "run", built, report.score_arrays({"scores": (scores, None)}, labels), plots=False)
    verify_audit_folder(tmp_path / "run")
    return tmp_path / "run"


def edit_report(folder, change):
    path = folder / "report.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


@pytest.mark.parametrize("change, needle", [
    (lambda r: [r], "not a report"),
    (lambda r: {**r, "files": list(r["files"])}, "lists no files"),
    (lambda r: {**r, "files": {}}, "lists no files"),
    (lambda r: {k: v for k, v in r.items() if k != "files"}, "lists no files"),
    (lambda r: {**r, "files": {k: v for k, v in r["files"].items() if k != "scores.npz"}}, "scores.npz"),
    (lambda r: {**r, "files": {**r["files"], "../outside.txt": {"sha256": "0" * 64}}}, "not a file name"),
    (lambda r: {**r, "files": {**r["files"], "scores.npz": "abc"}}, "does not match"),
])
def test_a_malformed_or_incomplete_report_fails_verification(folder, change, needle):
    """A list-shaped report or files entry, an empty or missing files list, one without scores.npz, a ../ name,
    an entry of the wrong shape: an OutputError naming the problem, never an AttributeError or a pass."""
    edit_report(folder, change)
    with pytest.raises(OutputError, match=needle):
        verify_audit_folder(folder)


def test_a_file_the_report_does_not_list_fails_verification(folder):
    """Files in the folder that report.json does not list mean the folder is not one run's."""
    (folder / "extra.png").write_bytes(b"\x89PNG")
    with pytest.raises(OutputError, match="extra.png"):
        verify_audit_folder(folder)


def test_a_listed_file_replaced_by_a_link_fails_verification(folder, tmp_path):
    target = tmp_path / "copy.csv"
    target.write_bytes((folder / "scores.csv").read_bytes())
    (folder / "scores.csv").unlink()
    (folder / "scores.csv").symlink_to(target)
    with pytest.raises(OutputError, match="scores.csv"):
        verify_audit_folder(folder)


def test_a_report_json_that_is_a_fifo_or_huge_is_refused_not_read(folder, monkeypatch):
    import os

    (folder / "report.json").unlink()
    os.mkfifo(folder / "report.json")
    with pytest.raises(OutputError):
        verify_audit_folder(folder)
