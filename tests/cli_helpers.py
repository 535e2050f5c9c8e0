"""The tests' one way to run the CLI in-process and to check that an error is one line (exit 2, no traceback)."""
from __future__ import annotations

from click.testing import CliRunner

from qmia_fast.cli import cli


def invoke(*args):
    """The result of `qmia-fast ARGS...` run in-process (arguments may be paths or numbers)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def run(*args, expect: int = 0):
    """invoke, asserting the exit code (0 by default), with the command's output in the failure message."""
    result = invoke(*args)
    assert result.exit_code == expect, result.output + result.stderr
    return result


def one_line_error(result, *needles) -> str:
    """The single 'qmia-fast: error:' line of a failed run (exit 2; the last line of stderr, no traceback, not an
    internal error), checked to contain every needle."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("qmia-fast: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "internal error" not in errors[0], lines
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
