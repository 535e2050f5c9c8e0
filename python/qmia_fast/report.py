"""Attack reports: per-method metrics into report.json, per-sample arrays into scores.npz, ROC plots, a summary table."""
from __future__ import annotations

import datetime
import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import metrics
from .atomic_io import atomic_path, save_npz, sha256_file, write_json
from .errors import InputError

REPORT_FORMAT = "qmia-fast/report"
REPORT_VERSION = 1
PLOT_HINT = "plots skipped: matplotlib is not installed (pip install 'qmia-fast[plot]')"
LOG_AXIS_FLOOR = 1e-5  # the log-log ROC shows FPR and TPR down to 1e-5 (DESIGN section 2)

# Display titles of the methods the attack reports (attack.BAG, SINGLE, MARGINAL); other names are shown as given.
TITLES = {"qmia_bag": "QMIA-bag", "single_regressor": "single regressor",
          "marginal_threshold": "marginal threshold"}


def build_report(results: Mapping[str, tuple], labels, *, config: Mapping | None = None, seed: int | None = None,
                 timings: Mapping | None = None, alpha: float | None = None, extra: Mapping | None = None) -> dict:
    """The report dictionary: metrics of every method plus what is needed to reproduce the run.

    results: method name -> (membership scores [N], higher = member; fixed decision bool [N] or None).
    labels: [N], 1 = member. Non-finite metrics (a class absent) are recorded as null.
    """
    labels_arr = metrics.check_labels(labels)
    if labels_arr.shape[0] == 0:
        raise InputError("labels is empty; a report needs at least one labelled sample")
    methods = {}
    for name, entry in results.items():
        scores, decision = entry if isinstance(entry, tuple) else (entry, None)
        summary = metrics.summarize(scores, labels_arr, decision)
        methods[name] = {"title": TITLES.get(name, name), **summary}
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "alpha": alpha,
        "n_samples": int(labels_arr.shape[0]),
        "n_members": int(labels_arr.sum()),
        "n_nonmembers": int(labels_arr.shape[0] - labels_arr.sum()),
        "methods": methods,
        "config": dict(config or {}),
        "seed": seed,
        "timings_s": dict(timings or {}),
        "versions": versions(),
        "build_info": _build_info(),
    }
    report.update(extra or {})
    return json_safe(report)


def report_from_attack(attack, result, labels, *, raw_scores=None, indices=None, config: Mapping | None = None,
                       timings: Mapping | None = None, extra: Mapping | None = None) -> tuple[dict, dict]:
    """(report, arrays) for a fitted QuantileAttack and its AttackResult on labelled images.

    The attack's resolved parameters go under config["attack"] and its fit facts under
    "fit"; fit timings join `timings`. Pass both on to write_report(out_dir, report, arrays).
    """
    results = result.report_results()
    merged_config = dict(config or {})
    merged_config["attack"] = attack.params()
    merged_timings = {**attack.fit_info.get("timings", {}), **dict(timings or {})}
    fit_facts = {k: v for k, v in attack.fit_info.items() if k != "timings"}
    built = build_report(results, labels, config=merged_config, seed=attack.seed, alpha=attack.alpha,
                         timings=merged_timings, extra={"fit": fit_facts, **dict(extra or {})})
    arrays = score_arrays(results, labels, raw_scores=raw_scores, indices=indices, votes=result.votes)
    return built, arrays


def versions() -> dict:
    """Versions of the pieces that determine the numbers in a report."""
    from . import __version__

    from importlib import metadata

    found = {"qmia_fast": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for distribution in ("torch", "click", "matplotlib"):
        try:
            found[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[distribution] = None
    try:  # the installed torch's own string names its build (+cpu, +cu124)
        import torch

        found["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return found


def _build_info():
    try:
        from .build_info import build_info
    except ImportError:
        return "unavailable"
    try:
        return build_info()
    except Exception as exc:  # noqa: BLE001 - a report must not fail over its provenance section
        return f"unavailable ({type(exc).__name__}: {exc})"


def json_safe(obj):
    """NaN and infinities become null (strict JSON has no NaN); numpy scalars and arrays become Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def score_arrays(results: Mapping[str, tuple], labels, raw_scores=None, indices=None, votes=None) -> dict:
    """The contents of scores.npz: labels, per-method membership scores and decisions, raw scores, indices."""
    labels_arr = np.asarray(labels).astype(np.int8)
    arrays = {"labels": labels_arr,
              "indices": np.arange(len(labels_arr), dtype=np.int64) if indices is None
              else np.asarray(indices, dtype=np.int64)}
    if raw_scores is not None:
        arrays["raw_scores"] = np.asarray(raw_scores, dtype=np.float64)
    if votes is not None:
        arrays["votes"] = np.asarray(votes, dtype=np.int32)
    for name, entry in results.items():
        scores, decision = entry if isinstance(entry, tuple) else (entry, None)
        arrays[f"membership_{name}"] = np.asarray(scores, dtype=np.float64)
        if decision is not None:
            arrays[f"decision_{name}"] = np.asarray(decision, dtype=bool)
    for key, value in arrays.items():
        if value.shape != (len(labels_arr),):
            raise InputError(f"{key} has shape {value.shape}; every per-sample array must be [{len(labels_arr)}]")
    return arrays


def write_artifacts(out_dir, report: dict, arrays: Mapping[str, np.ndarray], plots: bool = True
                    ) -> tuple[list[Path], str | None]:
    """Write scores.npz and, where matplotlib is installed, the plots; all atomically.

    `arrays` is what score_arrays() returns; the plots take each `membership_<name>` array
    with `labels`. Returns (written paths, one line for the user or None).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    save_npz(out / "scores.npz", **arrays)
    written.append(out / "scores.npz")
    note = None
    if plots:
        curves = {name: arrays[f"membership_{name}"] for name in report.get("methods", {})
                  if f"membership_{name}" in arrays}
        try:
            written += plot_roc(out, curves, arrays["labels"], report)
        except ImportError:
            note = PLOT_HINT
    return written, note


def write_report_json(out_dir, report: dict, files: Sequence[Path], note: str | None = None) -> Path:
    """Write report.json last, naming every other file of the run with its sha256 and size."""
    report = dict(report, files={Path(p).name: {"sha256": sha256_file(p), "bytes": Path(p).stat().st_size}
                                 for p in files})
    if note:
        report["plots"] = note
    path = Path(out_dir) / "report.json"
    write_json(path, report)
    return path


def write_report(out_dir, report: dict, arrays: Mapping[str, np.ndarray], plots: bool = True) -> dict:
    """scores.npz, the plots, then report.json (its presence means the rest is complete).

    Returns {"files": [written paths], "note": one line for the user or None}.
    """
    written, note = write_artifacts(out_dir, report, arrays, plots)
    written.append(write_report_json(out_dir, report, written, note))
    return {"files": written, "note": note}


def plot_roc(out_dir: Path, curves: Mapping[str, np.ndarray], labels, report: dict) -> list[Path]:
    """roc.png (linear axes) and roc_log.png (log-log, down to 1e-5); raises ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    roc = {name: metrics.roc_curve(scores, labels)[:2] for name, scores in curves.items()}
    paths = []
    for filename, log_axes in (("roc.png", False), ("roc_log.png", True)):
        # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
        figure = Figure(figsize=(5.0, 5.0), dpi=120)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        low = LOG_AXIS_FLOOR if log_axes else 0.0
        axes.plot([low, 1.0], [low, 1.0], linestyle="--", color="grey", linewidth=1, label="chance")
        for name, (fpr, tpr) in roc.items():
            method = report.get("methods", {}).get(name, {})
            auc_value = method.get("auc")
            label = TITLES.get(name, name) + (f" (AUC {auc_value:.4f})" if auc_value is not None else "")
            if log_axes:
                # Points at zero cannot sit on log axes; pin them to the floor so the 0%-FPR TPR shows.
                fpr, tpr = np.maximum(fpr, LOG_AXIS_FLOOR), np.maximum(tpr, LOG_AXIS_FLOOR)
            axes.plot(fpr, tpr, label=label, linewidth=1.5)  # straight segments: ties are diagonal steps
        if log_axes:
            axes.set_xscale("log")
            axes.set_yscale("log")
        axes.set_xlim(low, 1.0)
        axes.set_ylim(low, 1.0)
        axes.set_xlabel("false positive rate")
        axes.set_ylabel("true positive rate")
        axes.set_title("ROC, log-log" if log_axes else "ROC")
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        path = Path(out_dir) / filename
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        paths.append(path)
    return paths


def _percent(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.2f}%"


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"


def format_summary_table(report: dict) -> str:
    """A fixed-width table, one row per method: AUC, TPR at 1% and 0.1% FPR, balanced accuracy, decision FPR/TPR."""
    alpha = report.get("alpha")
    alpha_text = f"{100 * alpha:g}%" if alpha else "alpha"
    header = ["method", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "bal. acc.",
              f"FPR@{alpha_text}", f"TPR@{alpha_text}"]
    rows = []
    for name, method in report.get("methods", {}).items():
        tprs = method.get("tpr_at_fpr", {})
        decision = method.get("decision") or {}
        rows.append([method.get("title", name), _number(method.get("auc")), _percent(tprs.get("1%")),
                     _percent(tprs.get("0.1%")), _percent(method.get("balanced_accuracy")),
                     _percent(decision.get("fpr")) if decision else "-",
                     _percent(decision.get("tpr")) if decision else "-"])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
