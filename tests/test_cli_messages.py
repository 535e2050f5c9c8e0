"""What the CLI prints when interrupted: one line, and for resumable commands that a rerun picks up the scores."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from qmia_fast.cli import cli


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command, module, function, resumable", [
    (["score", "--out", "s.npz"], "qmia_fast.commands.score", "run_score", True),
    (["attack", "--out", "audit"], "qmia_fast.commands.attack", "run_audit", True),
    (["evaluate", "scores.npz"], "qmia_fast.commands.evaluate", "evaluate", False),
])
def test_ctrl_c_prints_one_line_that_says_how_to_resume(tmp_path, monkeypatch, command, module, function, resumable):
    import importlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "scores.npz").write_bytes(b"")
    target = importlib.import_module(module)
    if function == "evaluate":
        import qmia_fast.results.score_files as score_files

        monkeypatch.setattr(score_files, "read_score_table", interrupted)
    else:
        monkeypatch.setattr(target, function, interrupted)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 130
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qmia-fast: error: aborted")
    if resumable:
        assert "rerun the same command to resume" in lines[0] and "scores already computed are kept" in lines[0]
    else:
        assert lines[0] == "qmia-fast: error: aborted"
