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
    """factory(length, label) -> a context manager yielding an object with .update(n), for terminals."""
    global _terminal_bar
    _terminal_bar = factory


class _Silent:
    def update(self, n: int) -> None:
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
        self.started = clock()
        self.next_line = self.started + min(FIRST_LINE_S, self.every)

    def update(self, n: int) -> None:
        self.done += int(n)
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
    """A context manager yielding an object with .update(n): a bar where stderr is a terminal, periodic lines where
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
