"""Progress of long work on stderr: a bar on a terminal, a one-line report every so often in a log file, nothing when not asked."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

# How often a log (stderr not a terminal) gets a progress line; the first comes after FIRST_LINE_S,
# so a long run says early how long it will take.
LINE_EVERY_S = 30.0
FIRST_LINE_S = 5.0

# The CLI installs click's progress bar here (qmia_fast.cli); the library itself does not import click.
_terminal_bar: Callable[[int, str], contextlib.AbstractContextManager] | None = None


def use_terminal_bar(factory: Callable[[int, str], contextlib.AbstractContextManager] | None) -> None:
    """factory(length, label) -> a context manager yielding an object with .update(n[, note]), for terminals."""
    global _terminal_bar
    _terminal_bar = factory


class _Silent:
    def update(self, n: int, note: str | None = None) -> None:
        pass


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LineReporter:
    """Writes 'label: done/total (pct), rate/s, about T left' lines: at the first update after FIRST_LINE_S, then every
    `every` seconds, and once at the end (with the total time)."""

    def __init__(self, length: int, label: str, every: float = LINE_EVERY_S, stream=None, clock=time.monotonic):
        self.length, self.label, self.every = int(length), label, float(every)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.done = 0
        self.note: str | None = None
        self.started = clock()
        self.next_line = self.started + min(FIRST_LINE_S, self.every)

    def update(self, n: int, note: str | None = None) -> None:
        self.done += int(n)
        if note is not None:
            self.note = note
        now = self.clock()
        if now >= self.next_line and self.done < self.length:
            self._write(now)
            self.next_line = now + self.every

    def _write(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        line = f"{self.label}: {self.done}/{self.length} ({100.0 * self.done / max(self.length, 1):.0f}%), {rate:.3g}/s"
        if final:
            line += f", done in {format_duration(elapsed)}"
        elif rate > 0:
            line += f", about {format_duration((self.length - self.done) / rate)} left"
        if self.note:
            line += f"; {self.note}"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.done:
            self._write(self.clock(), final=True)


@contextlib.contextmanager
def _lines(length: int, label: str) -> Iterator[LineReporter]:
    reporter = LineReporter(length, label)
    try:
        yield reporter
    finally:
        reporter.close()


def progress_bar(enabled: bool, length: int, label: str):
    """A context manager yielding an object with .update(n[, note]): a bar where stderr is a terminal, periodic lines where
    it is not (a log file, a pipe, a batch job), nothing when not enabled."""
    if not enabled or length <= 0:
        return contextlib.nullcontext(_Silent())
    if _is_terminal(sys.stderr) and _terminal_bar is not None:
        return _terminal_bar(length, label)
    return _lines(length, label)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class StepProgress:
    """The trainers' per-step callback `(step, total, loss[, stage])` shown as progress_bar: one bar (or log lines)
    per stage, noted with a smoothed running loss; a resumed stage counts the steps left after its checkpoint."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.stage: str | None = None
        self.running_loss: float | None = None
        self._context = None
        self._bar = None

    def __call__(self, step: int, total: int, loss: float, stage: str | None = None) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.running_loss = stage, None
        if self._context is None:
            label = "training" if stage is None else f"training {stage}"
            # A resumed stage counts only the steps still to run, so the rate and the time left are this run's.
            if step > 1:
                label += f" (resumed at step {step} of {total})"
            self._context = progress_bar(self.enabled, total - step + 1, label)
            self._bar = self._context.__enter__()
        self.running_loss = loss if self.running_loss is None else 0.98 * self.running_loss + 0.02 * loss
        self._bar.update(1, f"loss {self.running_loss:.4f}")

    def close(self) -> None:
        if self._context is not None:
            context, self._context, self._bar = self._context, None, None
            context.__exit__(None, None, None)
