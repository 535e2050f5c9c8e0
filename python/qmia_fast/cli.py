"""The `qmia-fast` command-line entry point: a click group whose commands load lazily and whose errors are one line."""
from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from .errors import QmiaError

# name -> "module:attribute" under qmia_fast.commands; imported only when invoked so
# that `qmia-fast --help` stays quick and one command's optional imports never
# break another.
COMMANDS = {
    "attack": "attack:attack",
    "score": "score:score",
    "train-target": "train_target:train_target",
    "evaluate": "evaluate:evaluate",
    "bench": "bench:bench",
    "info": "info:info",
    "experiment": "experiment:experiment",
}


class QmiaGroup(click.Group):
    """A group that imports commands on demand and turns every error into one line on stderr."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"qmia_fast.commands.{module_name}")
        return getattr(module, attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from . import progress

        formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
        progress.use_terminal_bar(_ClickBar)
        try:
            rv = super().main(args=args, prog_name=prog_name or "qmia-fast",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _one_line(interrupted_message(args))
            sys.exit(130)
        except click.ClickException as exc:
            # Usage errors, bad option values: click would print a usage block; we keep one line.
            _one_line(exc.format_message())
            sys.exit(2)
        except QmiaError as exc:
            _one_line(str(exc))
            sys.exit(2)
        except KeyboardInterrupt:
            _one_line(interrupted_message(args))
            sys.exit(130)
        except SystemExit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("QMIA_DEBUG"):
                raise
            _one_line(f"internal error: {type(exc).__name__}: {exc} "
                      "(set QMIA_DEBUG=1 for the traceback and please report it)")
            sys.exit(1)
        finally:
            warnings.formatwarning = formatwarning
            progress.use_terminal_bar(None)
        if not standalone_mode:
            return rv
        sys.exit(0 if not isinstance(rv, int) else rv)


# Commands whose scores survive an interruption (resumable chunks) and what a rerun does not keep.
RESUMABLE = {"attack": " (the regressors are fitted again)", "score": ""}


def interrupted_message(args) -> str:
    """The one line printed on Ctrl-C: for resumable commands, that rerunning them picks up where they stopped."""
    argv = list(sys.argv[1:] if args is None else args)
    command = next((a for a in argv if not str(a).startswith("-")), None)
    if command in RESUMABLE:
        return (f"aborted; rerun the same command to resume: the scores already computed are kept"
                f"{RESUMABLE[command]}")
    return "aborted"


class _ClickBar:
    """click's progress bar with the progress protocol's optional note (e.g. a running loss) after the counts."""

    def __init__(self, length: int, label: str):
        self.bar = click.progressbar(length=length, label=label, file=sys.stderr, show_eta=True, show_pos=True,
                                     item_show_func=lambda note: note)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def update(self, n: int, note: str | None = None) -> None:
        self.bar.update(n, current_item=note)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # A warning is for the user of the command, not a pointer into our source files.
    return f"qmia-fast: warning: {' '.join(str(message).split())}\n"


def _one_line(message: str) -> None:
    text = " ".join(str(message).split())
    click.echo(f"qmia-fast: error: {text}", err=True)


@click.group(cls=QmiaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qmia-fast", prog_name="qmia-fast")
def cli():
    """Membership-inference audit of diffusion models by quantile regression (Tang et al., ICML 2024).

    Run `qmia-fast attack` with no options for the shipped demo.
    """


def main(argv=None):
    cli.main(args=argv)


if __name__ == "__main__":  # pragma: no cover
    main()
