"""Writing the results: markdown tables, figures (matplotlib, Agg canvas, lazily imported) and report.md / results.json."""
from __future__ import annotations

import datetime
import math
import numbers
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import atomic_io
from ..attack import BAG, MARGINAL, SINGLE
from ..errors import MissingExtraError, require_extra

TITLES = {BAG: "QMIA bag", SINGLE: "single regressor", MARGINAL: "marginal threshold", "oracle": "oracle"}
# One colour per method in every figure, so a reader learns it once.
COLOURS = {BAG: "tab:blue", SINGLE: "tab:orange", MARGINAL: "tab:grey", "oracle": "tab:green"}
RESULTS_FORMAT = "qmia-fast/experiments"
RESULTS_VERSION = 1


@dataclass
class Section:
    """One experiment's write-up: markdown blocks in order (text, tables, figure links) and its results for JSON."""

    name: str
    title: str
    out: Path
    blocks: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)   # lines printed on the terminal
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def text(self, markdown: str) -> None:
        self.blocks.append(markdown.strip())

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
        block = markdown_table(headers, rows)
        self.blocks.append(f"{caption}\n\n{block}" if caption else block)

    def figure(self, filename: str, caption: str, draw: Callable[[], Any]) -> None:
        """draw() -> a matplotlib Figure; saved as OUT/filename and shown inline. Skipped with a note without matplotlib."""
        try:
            figure = draw()
        except MissingExtraError as exc:
            note = f"figures skipped: {exc}"
            if note not in self.notes:
                self.notes.append(note)
            return
        save_figure(figure, self.out / filename)
        self.figures.append(filename)
        self.blocks.append(f"![{caption}]({filename})\n\n*{caption}*")


# --- numbers --------------------------------------------------------------------------------

def finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def pct(stat: dict | float, digits: int = 1) -> str:
    """41.5% or 41.5 +- 2.1% (mean +- sd over seeds)."""
    if isinstance(stat, dict):
        mean, sd = stat.get("mean"), stat.get("sd")
        if not finite(mean):
            return "n/a"
        if finite(sd) and sd > 0:  # a deterministic method (sd 0) shows its value alone
            return f"{100 * mean:.{digits}f} ± {100 * sd:.{digits}f}%"
        return f"{100 * mean:.{digits}f}%"
    return f"{100 * stat:.{digits}f}%" if finite(stat) else "n/a"


def num(stat: dict | float, digits: int = 3) -> str:
    if isinstance(stat, dict):
        mean, sd = stat.get("mean"), stat.get("sd")
        if not finite(mean):
            return "n/a"
        return f"{mean:.{digits}f} ± {sd:.{digits}f}" if finite(sd) and sd > 0 else f"{mean:.{digits}f}"
    return f"{stat:.{digits}f}" if finite(stat) else "n/a"


def interval(low: float, high: float, digits: int = 1) -> str:
    if not (finite(low) and finite(high)):
        return "n/a"
    return f"[{100 * low:.{digits}f}, {100 * high:.{digits}f}]%"


def seconds(value: float) -> str:
    if not finite(value):
        return "n/a"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --- figures --------------------------------------------------------------------------------

def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 4.0):
    """(Figure, 2-D array of axes) on an Agg canvas: no pyplot state, no display."""
    require_extra("matplotlib", "plot", "the experiment figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height * nrows), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, squeeze=False)


def save_figure(figure, path: Path) -> None:
    for axes in figure.axes:
        fit_axes(axes)
    figure.tight_layout()
    with atomic_io.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def fit_axes(axes) -> None:
    """Titles wrapped to the panel's width (long target names are not clipped), and a panel whose points share
    one x value shown with room around it instead of zoomed in on a single column."""
    import textwrap

    title = axes.get_title()
    width_in = axes.get_position().width * axes.figure.get_figwidth()
    columns = max(30, int(width_in * 11))
    if title and max(len(line) for line in title.splitlines()) > columns:
        axes.set_title("\n".join(textwrap.fill(line, columns) for line in title.splitlines()))
    low, high = axes.dataLim.intervalx
    if np.isfinite(low) and np.isfinite(high) and high == low:
        if axes.get_xscale() == "log" and low > 0:
            axes.set_xlim(low / 3, high * 3)
        else:
            half = 0.5 * max(abs(low), 1.0)
            axes.set_xlim(low - half, high + half)


def label_panel(axes, xlabel: str, ylabel: str, title: str, *, legend_size: float = 7,
                legend_loc: str | None = None, grid: str = "major") -> None:
    """A panel's axis labels, title, legend and light grid, alike in every experiment's figures.

    grid is which ticks the grid follows ("both" on log axes, so the minor decades show too).
    """
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=legend_size, loc=legend_loc)
    axes.grid(True, which=grid, alpha=0.3)


def errorbar(axes, x, stats: Sequence[dict], label: str, colour: str | None = None, scale: float = 100.0,
             **style) -> None:
    """Means with +-sd bars (sd over seeds); NaN sd (one seed or a deterministic method) draws no bar."""
    means = [scale * s["mean"] if finite(s.get("mean")) else float("nan") for s in stats]
    sds = [scale * s["sd"] if finite(s.get("sd")) else 0.0 for s in stats]
    axes.errorbar(x, means, yerr=sds, label=label, color=colour, capsize=3, marker=style.pop("marker", "o"),
                  markersize=style.pop("markersize", 4), linewidth=style.pop("linewidth", 1.5), **style)


# --- the report -----------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and cores, torch threads, GPU if any."""
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "avx512f", "amx_tile") if f" {f} " in text or f" {f}\n" in text)
    except OSError:
        pass
    info = {"cpu": model, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_outputs(out: Path, sections: Sequence[Section], setup: dict[str, Any], command: str,
                  started: datetime.datetime, finished: bool) -> list[Path]:
    """report.md and results.json in `out` (rewritten after every experiment, so a long run shows its progress)."""
    from ..results.report import json_safe, versions

    out.mkdir(parents=True, exist_ok=True)
    host = machine()
    results = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "command": command,
               "started": started.isoformat(timespec="seconds"), "complete": finished, "machine": host,
               "versions": versions(), "setup": setup,
               "experiments": {s.name: {**s.results, "seconds": s.seconds, "notes": s.notes,
                                        "figures": s.figures} for s in sections}}
    atomic_io.write_json(out / "results.json", json_safe(results))
    lines = ["# qmia-fast experiments", "",
             f"Command: `{command}`  ", f"Started {started.strftime('%Y-%m-%d %H:%M')} UTC"
             + ("" if finished else " (run still in progress: sections below are the ones finished so far)") + "  ",
             f"Machine: {host['cpu']} ({host['logical_cpus']} logical CPUs, {host['cpu_flags'] or 'no AVX2'}), "
             f"torch {results['versions'].get('torch', '?')}, "
             f"{setup.get('threads') or host['torch_threads']} thread(s) for scoring and fitting"
             + (f", GPU {host['gpu']}" if "gpu" in host else "") + "", "",
             _setup_text(setup), ""]
    if len(sections) > 1:
        lines += ["Sections: " + ", ".join(f"[{s.title}](#{_anchor(s.title)})" for s in sections), ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for block in s.blocks:
            lines += [block, ""]
        for note in s.notes:
            lines += [f"> {note}", ""]
        lines += [f"*Wall time of this experiment: {seconds(s.seconds)} (cached scores and fits are reused).*", ""]
    atomic_io.write_text(out / "report.md", "\n".join(lines).rstrip() + "\n")
    return [out / "report.md", out / "results.json"]


def _setup_text(setup: dict[str, Any]) -> str:
    sets = setup.get("sets", {})
    score = setup.get("score", {})
    from ..scoring import METHOD_SETTINGS

    method = score.get("method", "?")
    score_text = method + "".join(f", {k} = {score[k]}" for k in METHOD_SETTINGS.get(method, ()) if k in score)
    reg = setup.get("regressor_options", {})
    return (f"Target: {setup.get('model', {}).get('format', '?')} model, images "
            f"{'x'.join(map(str, setup.get('model', {}).get('image_shape', [])))}. Data: {setup.get('data', '?')}. "
            f"Sets: {sets.get('members', '?')} members, {sets.get('public', '?')} public non-members (the attacker's "
            f"auxiliary set), {sets.get('holdout', '?')} holdout non-members. Score: {score_text}"
            + (f" ({setup['score_note']})" if setup.get("score_note") else "")
            + f". Attack: alpha = {setup.get('alpha')}, {setup.get('n_models')} regressors, regressor "
            f"{setup.get('regressor', '?')}, calibration {setup.get('calibration', '?')}"
            + (f", regressor options {reg}" if reg else "") + f"; seed {setup.get('seed')}. "
            "TPR@1%FPR is read off the exact ROC of the continuous membership score (bag: mean margin); "
            "the decision rates are those of the fixed alpha decision on the holdout. "
            "± is the sd over bag seeds (training noise); [a, b] is a 95% Clopper-Pearson interval "
            "(sampling noise of the finite evaluation set).")


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")
