"""Attack reports: per-method metrics into report.json, per-sample arrays into scores.npz and scores.csv, a LeakPro export, plots, a summary table."""
from __future__ import annotations

import datetime
import json
import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import metrics
from ..voting import vote_threshold
from ..atomic_io import save_npz, write_json, written_digest
from ..errors import InputError, OutputError
from .plots import PLOT_HINT, plot_roc, run_caption, write_plots
from .summary_table import TITLES, format_summary_table

__all__ = [
    "REPORT_FORMAT", "REPORT_VERSION", "SCHEMA_PATH", "SCORES_FORMAT", "TITLES", "PLOT_HINT", "build_report",
    "report_from_attack", "score_arrays", "vote_threshold", "write_artifacts", "write_report_json", "write_report",
    "plot_roc", "format_summary_table", "load_schema", "validate_report", "run_caption", "versions", "json_safe",
]

REPORT_FORMAT = "qmia-fast/report"
# 2: config is {"spec", "score", "attack", ...}, files is a dict, operating points with counts and
# intervals, resolution and warnings.
REPORT_VERSION = 2
SCHEMA_PATH = Path(__file__).parent.parent / "assets" / "report.schema.json"
SCORES_FORMAT = "qmia-fast/audit-scores"  # the metadata string inside an audit's scores.npz


def build_report(results: Mapping[str, tuple], labels, *, config: Mapping | None = None, seed: int | None = None,
                 timings: Mapping | None = None, alpha: float | None = None, extra: Mapping | None = None,
                 oracle_alpha: float | None = None, decision_kind: str = "calibrated") -> dict:
    """The report dictionary: metrics of every method plus what is needed to reproduce the run.

    results: method name -> (membership scores [N], higher = member; fixed decision bool [N] or None).
    labels: [N], 1 = member, both classes present (else InputError). alpha: the level of the fixed
    decisions (decision_kind "calibrated": set without the evaluation labels). oracle_alpha: also
    report, per method, the decision at the ROC point for FPR <= oracle_alpha ("oracle": a
    threshold chosen on the evaluated non-members themselves).
    """
    labels_arr = metrics.check_labels(labels)
    if labels_arr.shape[0] == 0:
        raise InputError("labels is empty; a report needs at least one labelled sample")
    n_pos, n_neg = metrics.require_both_classes(labels_arr)
    methods = {}
    for name, entry in results.items():
        scores, decision = entry if isinstance(entry, tuple) else (entry, None)
        summary = metrics.summarize(scores, labels_arr, decision, alpha=alpha, decision_kind=decision_kind)
        if summary.get("decision"):
            summary["decision"].pop("alpha", None)  # the report's own alpha (top level) is its level
        if oracle_alpha is not None:
            oracle = metrics.oracle_decision(scores, labels_arr, oracle_alpha)
            summary["oracle"] = metrics.decision_summary(oracle, labels_arr, oracle_alpha, "oracle")
        methods[name] = {"title": TITLES.get(name, name), **summary}
    warnings = []
    levels = sorted({level for level in (alpha, oracle_alpha) if level is not None})
    for level in levels:
        problem = metrics.alpha_resolution(level, n_neg)
        if problem:
            warnings.append(problem)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "alpha": alpha,
        "n_samples": int(labels_arr.shape[0]),
        "n_members": n_pos,
        "n_nonmembers": n_neg,
        "resolution": {
            "confidence": metrics.CONFIDENCE,
            "interval": "Clopper-Pearson (exact binomial), two-sided",
            "min_resolvable_fpr": 1.0 / n_neg,
            "min_resolvable_tpr": 1.0 / n_pos,
            "alpha_resolved": None if alpha is None else metrics.alpha_resolution(alpha, n_neg) is None,
            "rule": f"an FPR target below 1 / (non-members) is not resolvable (null); a level alpha is resolved "
                    f"when at least {metrics.MIN_EXPECTED_FALSE_POSITIVES} false positives are expected at it "
                    f"(non-members >= {metrics.MIN_EXPECTED_FALSE_POSITIVES} / alpha)",
        },
        "methods": methods,
        "warnings": warnings,
        "config": dict(config or {}),
        "seed": seed,
        "timings_s": dict(timings or {}),
        "versions": versions(),
        "build_info": _build_info(),
    }
    report.update(extra or {})
    return json_safe(report)


def report_from_attack(attack, result, labels, *, raw_scores=None, indices=None, files=None,
                       config: Mapping | None = None, timings: Mapping | None = None,
                       extra: Mapping | None = None) -> tuple[dict, dict]:
    """(report, arrays) for a fitted QuantileAttack and its AttackResult on labelled images.

    The attack's resolved parameters go under config["attack"] and its fit facts under
    "fit"; fit timings join `timings`. files: per-image source names (an image folder's),
    kept in scores.npz and scores.csv. Pass both on to write_report(out_dir, report, arrays).
    """
    results = result.report_results()
    merged_config = dict(config or {})
    # The attack as fitted, without alpha: the report's top-level alpha is the one home of the level.
    merged_config["attack"] = {key: value for key, value in attack.params().items() if key != "alpha"}
    merged_timings = {**attack.fit_info.get("timings", {}), **dict(timings or {})}
    fit_facts = {k: v for k, v in attack.fit_info.items() if k != "timings"}
    built = build_report(results, labels, config=merged_config, seed=attack.seed, alpha=attack.alpha,
                         timings=merged_timings, extra={"fit": fit_facts, **dict(extra or {})})
    calibration_warning = (fit_facts.get("calibration") or {}).get("warning")
    if calibration_warning:  # a conformal decision was asked for and could not be given: never silently
        built["warnings"].append(calibration_warning)
    arrays = score_arrays(results, labels, raw_scores=raw_scores, indices=indices, votes=result.votes,
                          thresholds=result.thresholds, files=files)
    return built, arrays


def versions() -> dict:
    """Versions of the pieces that determine the numbers in a report."""
    from .. import __version__

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
        from ..build_info import build_info
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


def score_arrays(results: Mapping[str, tuple], labels, raw_scores=None, indices=None, votes=None,
                 thresholds=None, files: Sequence[str] | None = None) -> dict:
    """The contents of scores.npz: labels, per-method membership scores and decisions, raw scores, indices,
    and where known the votes, the bag's vote threshold (log scale) and per-image file names."""
    labels_arr = np.asarray(labels).astype(np.int8)
    arrays = {"labels": labels_arr,
              "indices": np.arange(len(labels_arr), dtype=np.int64) if indices is None
              else np.asarray(indices, dtype=np.int64)}
    if raw_scores is not None:
        arrays["raw_scores"] = np.asarray(raw_scores, dtype=np.float64)
    if votes is not None:
        arrays["votes"] = np.asarray(votes, dtype=np.int32)
    if thresholds is not None:
        arrays["bag_threshold"] = vote_threshold(thresholds)
    if files is not None:
        arrays["files"] = np.asarray([str(name) for name in files], dtype=str)
    for name, entry in results.items():
        scores, decision = entry if isinstance(entry, tuple) else (entry, None)
        arrays[f"membership_{name}"] = np.asarray(scores, dtype=np.float64)
        if decision is not None:
            arrays[f"decision_{name}"] = np.asarray(decision, dtype=bool)
    for key, value in arrays.items():
        if value.shape != (len(labels_arr),):
            raise InputError(f"{key} has shape {value.shape}; every per-sample array must be [{len(labels_arr)}]")
    return arrays


def _npz_metadata(report: dict) -> str:
    # Tells `qmia-fast evaluate` (and anyone else) which way each array points and at which level the
    # decisions were taken, so that reading the file back needs no guess.
    attack = (report.get("config") or {}).get("attack") or {}
    return json.dumps({"format": SCORES_FORMAT, "version": 1, "alpha": report.get("alpha"),
                       "n_models": attack.get("n_models"), "membership_direction": "higher_is_member",
                       "raw_direction": "lower_is_member", "bag_threshold": "log scale, the vote's threshold"})


def write_artifacts(out_dir, report: dict, arrays: Mapping[str, np.ndarray], plots: bool = True
                    ) -> tuple[list[Path], str | None]:
    """Write scores.npz, scores.csv (with its scores.csv.json), leakpro.json and, where matplotlib is installed, the plots; all atomically.

    `arrays` is what score_arrays() returns (plus any other arrays to keep in scores.npz).
    Returns (written paths, one line for the user or None).
    """
    from .interop import csv_sidecar_path, write_leakpro_json, write_scores_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    save_npz(out / "scores.npz", **arrays, metadata=np.array(_npz_metadata(report)))
    written.append(out / "scores.npz")
    written.append(write_scores_csv(out / "scores.csv", report, arrays))
    written.append(csv_sidecar_path(out / "scores.csv"))
    written.append(write_leakpro_json(out / "leakpro.json", report, arrays))
    note = None
    if plots:
        try:
            written += write_plots(out, report, arrays)
        except ImportError:
            note = PLOT_HINT
    return written, note


def write_report_json(out_dir, report: dict, files: Sequence[Path], note: str | None = None) -> Path:
    """Write report.json last, naming every other file of the run with the sha256 and size of what this run wrote.

    The hashes are those atomic_io recorded while this process wrote each file, not those of
    whatever is on disk now: a file another process put there since is caught by verification.
    """
    listed = {}
    for p in files:
        recorded = written_digest(p)
        if recorded is None:
            raise OutputError(f"{p} was not written by this run; rerun with --overwrite")
        listed[Path(p).name] = {"sha256": recorded[0], "bytes": recorded[1]}
    report = dict(report, files=listed)
    if note:
        report["plots"] = note
    path = Path(out_dir) / "report.json"
    write_json(path, report)
    return path


def write_report(out_dir, report: dict, arrays: Mapping[str, np.ndarray], plots: bool = True) -> dict:
    """scores.npz, scores.csv, leakpro.json, the plots, then report.json (its presence means the rest is complete).

    Returns {"files": [written paths], "note": one line for the user or None}.
    """
    written, note = write_artifacts(out_dir, report, arrays, plots)
    written.append(write_report_json(out_dir, report, written, note))
    return {"files": written, "note": note}


def load_schema() -> dict:
    """The JSON Schema of report.json (shipped as assets/report.schema.json)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(report: Mapping) -> None:
    """Raise InputError naming the first place where `report` departs from the report.json schema."""
    from .schema import validate

    validate(report, load_schema(), name="report.json")
