"""Report figures (matplotlib's object API on an Agg canvas, imported lazily): ROC, log-log ROC, score histogram, threshold scatter."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .. import metrics
from ..atomic_io import atomic_path

PLOT_HINT = "plots skipped: matplotlib is not installed (pip install '.[plot]' from the qmia-fast checkout)"
_DPI = 120
_MEMBER_COLOR, _NONMEMBER_COLOR = "#d62728", "#1f77b4"


def _figure(width: float = 5.6, height: float = 5.2):
    # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def run_caption(report: Mapping) -> str:
    """One line naming what was audited (model, score, data) for plot titles; parts that are unknown are left out."""
    config = report.get("config") or {}
    spec = config.get("spec") or {}
    parts = []
    model_path = (spec.get("model") or {}).get("path")
    model = report.get("model")
    model_format = model.get("format") if isinstance(model, Mapping) else None
    if model_path:
        parts.append(f"model {Path(str(model_path)).name or model_path}" + (f" ({model_format})" if model_format else ""))
    score = config.get("score") or {}
    if score.get("method"):
        settings = [f"{key}={score[key]}" for key in ("t_sec", "k", "t", "p", "n_draws") if key in score]
        parts.append(f"score {score['method']}" + (f" ({', '.join(settings)})" if settings else ""))
    data_path = (spec.get("data") or {}).get("path")
    if data_path:
        parts.append(f"data {Path(str(data_path)).name or data_path}")
    inputs = config.get("inputs")
    if inputs and not parts:
        parts.append("scores from " + ", ".join(Path(str(p)).name for p in inputs))
    return "; ".join(parts)


def _counts_line(report: Mapping) -> str:
    return f"{report.get('n_members')} members vs {report.get('n_nonmembers')} non-members (holdout)"


def _title(axes, heading: str, report: Mapping) -> None:
    import textwrap

    caption = run_caption(report)
    lines = [heading] + ([caption] if caption else []) + [_counts_line(report)]
    # About 12 characters per inch at 8.5 pt: long model or data names wrap instead of running off the figure.
    columns = max(40, int(axes.figure.get_figwidth() * 12))
    axes.set_title("\n".join(textwrap.fill(line, columns) for line in lines), fontsize=8.5)


def _primary_decision(report: Mapping):
    """(method title, decision entry) of the first method with a fixed decision, or (None, None)."""
    for name, method in (report.get("methods") or {}).items():
        if method.get("decision"):
            return method.get("title", name), method["decision"]
    return None, None


def plot_roc(out_dir: Path, curves: Mapping[str, np.ndarray], labels, report: Mapping) -> list[Path]:
    """Write roc.png (linear axes) and roc_log.png (log-log over the resolvable range); ImportError without matplotlib."""
    return [_save(figure, Path(out_dir) / name) for name, figure in roc_figures(curves, labels, report).items()]


def roc_figures(curves: Mapping[str, np.ndarray], labels, report: Mapping) -> dict:
    """{"roc.png": linear ROC, "roc_log.png": log-log ROC} as matplotlib Figures, one curve per method.

    The log-log axes start at 1/(non-members) for FPR and 1/(members) for TPR: below one sample
    a rate cannot be measured. Points at zero lie outside the axes, so the curve enters from
    the edge at its height there. Both mark alpha and the first method's fixed decision.
    """
    roc = {name: metrics.roc_curve(scores, labels)[:2] for name, scores in curves.items()}
    n_pos, n_neg = metrics.require_both_classes(metrics.check_labels(labels))
    fpr_floor, tpr_floor = 1.0 / n_neg, 1.0 / n_pos
    alpha = report.get("alpha")
    decision_title, decision = _primary_decision(report)
    figures = {}
    for filename, log_axes in (("roc.png", False), ("roc_log.png", True)):
        figure, axes = _figure()
        x_low, y_low = (fpr_floor, tpr_floor) if log_axes else (0.0, 0.0)
        diagonal_low = min(x_low, y_low)
        axes.plot([diagonal_low, 1.0], [diagonal_low, 1.0], linestyle="--", color="grey", linewidth=1,
                  label="chance (TPR = FPR)")
        for name, (fpr, tpr) in roc.items():
            method = (report.get("methods") or {}).get(name, {})
            auc_value = method.get("auc")
            label = method.get("title", name) + (f" (AUC {auc_value:.4f})" if auc_value is not None else "")
            if log_axes:
                fpr = np.where(fpr > 0, fpr, x_low / 10)
                tpr = np.where(tpr > 0, tpr, y_low / 10)
            axes.plot(fpr, tpr, label=label, linewidth=1.5)  # straight segments: ties are diagonal steps
        if alpha and alpha >= x_low:
            axes.axvline(alpha, color="black", linestyle=":", linewidth=1, label=f"alpha = {100 * alpha:g}%")
        elif alpha:
            # Not a line off the axes: say why it is missing.
            axes.plot([], [], linestyle=":", color="black",
                      label=f"alpha = {100 * alpha:g}%, below 1/{n_neg}: not resolvable here")
        if decision:
            x, y = decision["fpr"], decision["tpr"]
            axes.plot([max(x, x_low) if log_axes else x], [max(y, y_low) if log_axes else y], marker="o",
                      markersize=7, markerfacecolor="none", markeredgecolor="black", linestyle="none",
                      clip_on=False,
                      label=f"{decision_title} decision at alpha: FPR {decision['fp']}/{decision['n_nonmembers']}, "
                            f"TPR {decision['tp']}/{decision['n_members']}")
        if log_axes:
            axes.set_xscale("log")
            axes.set_yscale("log")
        axes.set_xlim(x_low, 1.0)
        axes.set_ylim(y_low, 1.0)
        axes.set_xlabel("false positive rate (share of non-members called member)" +
                        (", log scale" if log_axes else ""))
        axes.set_ylabel("true positive rate (share of members called member)" + (", log scale" if log_axes else ""))
        _title(axes, "ROC, log-log (down to one sample per class)" if log_axes else "ROC", report)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(loc="lower right", fontsize=7)
        figures[filename] = figure
    return figures


def _log_raw(arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    raw = arrays.get("raw_scores")
    if raw is None:
        return None
    raw = np.asarray(raw, dtype=np.float64)
    if not (np.isfinite(raw).all() and (raw > 0).all()):
        return None  # not raw scores of ours (they are positive); nothing meaningful to take the log of
    return np.log(raw)


def _score_name(report: Mapping) -> str:
    method = ((report.get("config") or {}).get("score") or {}).get("method")
    return f"{method} score" if method else "raw score"


def score_histogram_figure(report: Mapping, arrays: Mapping[str, np.ndarray]):
    """score_histogram.png's Figure: log raw score of members against non-members, each as a share of its set."""
    log_raw = _log_raw(arrays)
    labels = np.asarray(arrays["labels"])
    figure, axes = _figure(6.4, 4.6)
    edges = np.histogram_bin_edges(log_raw, bins=min(60, max(10, int(np.sqrt(len(log_raw))))))
    for member, color, name in ((0, _NONMEMBER_COLOR, "non-members (holdout)"), (1, _MEMBER_COLOR, "members")):
        values = log_raw[labels == member]
        axes.hist(values, bins=edges, weights=np.full(len(values), 1.0 / len(values)), histtype="step",
                  linewidth=1.5, color=color, label=f"{name}, n = {len(values)}")
    marginal = (report.get("fit") or {}).get("marginal_threshold")
    if marginal is not None:
        alpha = report.get("alpha")
        axes.axvline(marginal, color="black", linestyle=":", linewidth=1,
                     label=f"marginal threshold (public {100 * alpha:g}% quantile)" if alpha else "marginal threshold")
    axes.set_xlabel(f"log s(x): log of the raw {_score_name(report)} (lower = more likely member)")
    axes.set_ylabel("share of the set per bin")
    _title(axes, "Log membership score log s(x) by set", report)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    return figure


def threshold_scatter_figure(report: Mapping, arrays: Mapping[str, np.ndarray]):
    """threshold_scatter.png's Figure: each image's bag threshold q_alpha(x) against its log score (above the
    diagonal: called member), the picture behind QMIA's per-image thresholds."""
    log_raw = _log_raw(arrays)
    threshold = np.asarray(arrays["bag_threshold"], dtype=np.float64)
    labels = np.asarray(arrays["labels"])
    alpha = report.get("alpha")
    level = f"{100 * alpha:g}%" if alpha else "alpha"
    figure, axes = _figure(6.0, 5.6)
    size = 10 if len(labels) <= 5000 else 3
    for member, color, marker, name in ((0, _NONMEMBER_COLOR, ".", "non-members (holdout)"),
                                        (1, _MEMBER_COLOR, "x", "members")):
        chosen = labels == member
        called = int(np.count_nonzero(log_raw[chosen] < threshold[chosen]))
        axes.scatter(log_raw[chosen], threshold[chosen], s=size, marker=marker, color=color, alpha=0.6,
                     linewidths=0.8, label=f"{name}: {called} of {int(chosen.sum())} called member")
    low = float(min(log_raw.min(), threshold.min()))
    high = float(max(log_raw.max(), threshold.max()))
    pad = 0.03 * (high - low or 1.0)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], linestyle="--", color="grey", linewidth=1,
              label="q(x) = log s(x): above it, called member")
    axes.set_xlim(low - pad, high + pad)
    axes.set_ylim(low - pad, high + pad)
    axes.set_xlabel(f"log s(x): log of the raw {_score_name(report)} (lower = more likely member)")
    axes.set_ylabel(f"bag threshold q(x): the vote's {level} quantile of log s for this image")
    _title(axes, f"Per-image thresholds of the bag at alpha = {level}", report)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize=7)
    return figure


def write_plots(out_dir, report: Mapping, arrays: Mapping[str, np.ndarray]) -> list[Path]:
    """Every plot the arrays allow: the two ROCs; the score histogram where raw scores are known; the
    threshold scatter where the bag's thresholds are too. ImportError without matplotlib."""
    out = Path(out_dir)
    curves = {name: arrays[f"membership_{name}"] for name in report.get("methods", {})
              if f"membership_{name}" in arrays}
    paths = plot_roc(out, curves, arrays["labels"], report)
    if _log_raw(arrays) is not None:
        paths.append(_save(score_histogram_figure(report, arrays), out / "score_histogram.png"))
        if "bag_threshold" in arrays:
            paths.append(_save(threshold_scatter_figure(report, arrays), out / "threshold_scatter.png"))
    return paths
