"""Exports other audit tools read: a per-image scores.csv and leakpro.json, a result with the fields of LeakPro's MIAResult."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import metrics
from ..atomic_io import write_json, write_text

AUDIT_CSV_FORMAT = "qmia-fast/audit-scores-csv"
# Cell starts a spreadsheet evaluates as a formula (OWASP CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# LeakPro's fixed-FPR table: these targets, keyed as it formats them ("TPR@0.1%FPR").
LEAKPRO_FPRS = (0.0, 1e-4, 1e-3, 1e-2, 0.1)


def leakpro_key(target: float) -> str:
    """LeakPro's key for a TPR at a fixed FPR: the percentage without trailing zeros, e.g. 'TPR@0.01%FPR'."""
    percent = f"{100 * target:.8f}".rstrip("0").rstrip(".")
    return f"TPR@{percent}%FPR"


def primary_method(report: Mapping) -> str:
    """The method an export describes: the first in the report (the QMIA bag in an audit)."""
    methods = list(report.get("methods") or {})
    if not methods:
        raise ValueError("the report has no methods")
    return methods[0]


def leakpro_result(report: Mapping, arrays: Mapping[str, np.ndarray], method: str | None = None) -> dict[str, Any]:
    """One method's result with the field names and shapes of LeakPro's MIA result (MIAResultSchema).

    tpr / fpr / tp / fp / tn / fn / accuracy: one entry per point of the exact ROC (from
    nothing predicted member to everything); signal_values: the membership scores, higher =
    member, as LeakPro expects; true_labels: 1 = member. fixed_fpr holds LeakPro's targets
    that the holdout can resolve (at least one false positive's worth); the others are listed
    in config["unresolvable_fixed_fpr"] instead of being given a number.
    """
    name = method or primary_method(report)
    entry = report["methods"][name]
    scores = np.asarray(arrays[f"membership_{name}"], dtype=np.float64)
    labels = np.asarray(arrays["labels"]).astype(np.int64)
    false_pos, true_pos, _, n_pos, n_neg = metrics.roc_counts(scores, labels)
    true_neg, false_neg = n_neg - false_pos, n_pos - true_pos
    points = metrics.operating_points(scores, labels, LEAKPRO_FPRS)
    fixed = {leakpro_key(p["target_fpr"]): p["tpr"] for p in points.values() if p["resolvable"]}
    unresolvable = [leakpro_key(p["target_fpr"]) for p in points.values() if not p["resolvable"]]
    config = report.get("config") or {}
    return {
        "result_name": entry.get("title", name),
        "result_type": "MIAResult",
        "id": f"qmia-fast/{name}",
        "tpr": (true_pos / n_pos).tolist(),
        "fpr": (false_pos / n_neg).tolist(),
        "roc_auc": entry.get("auc"),
        "accuracy": ((true_pos + true_neg) / (n_pos + n_neg)).tolist(),
        "fixed_fpr": fixed,
        "signal_values": scores.tolist(),
        "true_labels": labels.tolist(),
        "config": {
            "tool": "qmia-fast",
            "report_format": f"{report.get('format')} v{report.get('version')}",
            "method": name,
            "alpha": report.get("alpha"),
            "score": config.get("score"),
            "attack": config.get("attack"),
            "signal_direction": "higher signal_values = more likely member",
            "sample_indices": np.asarray(arrays["indices"]).astype(np.int64).tolist() if "indices" in arrays else None,
            "unresolvable_fixed_fpr": unresolvable,
        },
        "tp": true_pos.tolist(),
        "fp": false_pos.tolist(),
        "tn": true_neg.tolist(),
        "fn": false_neg.tolist(),
    }


def write_leakpro_json(path, report: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write leakpro_result() for the report's primary method to `path` (atomically)."""
    write_json(Path(path), leakpro_result(report, arrays))
    return Path(path)


def _number(value: float) -> str:
    # repr keeps every bit of a float64; non-finite values are left empty rather than written as text.
    return repr(float(value)) if math.isfinite(value) else ""


def scores_table_columns(report: Mapping, arrays: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(column name, per-image values) of scores.csv, in order; columns whose data is absent are left out.

    index, file (an image folder's relative name), label (1 = member), raw_score (lower =
    member), log_score, bag_threshold (the vote's log-score threshold: member iff log_score <
    bag_threshold), votes, membership_score and decision (the primary method: the QMIA bag),
    then membership_<method> and decision_<method> for the baselines.
    """
    columns: list[tuple[str, np.ndarray]] = [("index", np.asarray(arrays["indices"]))]
    if "files" in arrays:
        columns.append(("file", np.asarray(arrays["files"])))
    columns.append(("label", np.asarray(arrays["labels"])))
    if "raw_scores" in arrays:
        raw = np.asarray(arrays["raw_scores"], dtype=np.float64)
        columns.append(("raw_score", raw))
        with np.errstate(divide="ignore", invalid="ignore"):
            columns.append(("log_score", np.where(raw > 0, np.log(np.where(raw > 0, raw, 1.0)), np.nan)))
    if "bag_threshold" in arrays:
        columns.append(("bag_threshold", np.asarray(arrays["bag_threshold"])))
    if "votes" in arrays:
        columns.append(("votes", np.asarray(arrays["votes"])))
    primary = primary_method(report)
    for name in report.get("methods") or {}:
        if f"membership_{name}" in arrays:
            column = "membership_score" if name == primary else f"membership_{name}"
            columns.append((column, np.asarray(arrays[f"membership_{name}"])))
        if f"decision_{name}" in arrays:
            column = "decision" if name == primary else f"decision_{name}"
            columns.append((column, np.asarray(arrays[f"decision_{name}"])))
    return columns


def write_scores_csv(path, report: Mapping, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write scores.csv (one row per evaluated image, members then holdout; see scores_table_columns) and,
    beside it, scores.csv.json: the columns' directions, the primary method's name, alpha and the CSV's sha256."""
    columns = scores_table_columns(report, arrays)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    for row in range(len(columns[0][1])):
        cells = []
        for name, values in columns:
            value = values[row]
            if name == "file":
                cells.append(csv_text(str(value)))
            elif values.dtype.kind == "f":
                cells.append(_number(value))
            else:
                cells.append(str(int(value)))
        writer.writerow(cells)
    path = Path(path)
    write_text(path, buffer.getvalue())
    attack = (report.get("config") or {}).get("attack") or {}
    write_csv_sidecar(path, {"format": AUDIT_CSV_FORMAT, "version": 1, "alpha": report.get("alpha"),
                             "n_models": attack.get("n_models"), "primary_method": primary_method(report),
                             "methods": list(report.get("methods") or {}),
                             "membership_direction": "higher_is_member", "raw_direction": "lower_is_member"})
    return path


def csv_sidecar_path(path) -> Path:
    """The JSON file beside a CSV score file that holds its metadata: NAME.csv -> NAME.csv.json."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_csv_sidecar(csv_path, metadata: Mapping[str, Any]) -> Path:
    """Write NAME.csv.json: the metadata plus the CSV's name and sha256 (of the bytes this process wrote)."""
    from ..atomic_io import written_digest

    csv_path = Path(csv_path)
    recorded = written_digest(csv_path)
    sidecar = csv_sidecar_path(csv_path)
    write_json(sidecar, {"sidecar_of": csv_path.name, "csv_sha256": recorded[0] if recorded else None,
                         "metadata": dict(metadata)})
    return sidecar


def display_name(text: str) -> str:
    """A file name as every output writes it: backslashes, control characters and undecodable bytes escaped.

    A name whose bytes are not UTF-8 reaches Python with those bytes as lone surrogates; it is
    written with each such byte as \\xNN (and a backslash as \\\\, a control character as \\xNN),
    so that a CSV row stays one row and every name can be written and read back as text.
    """
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def csv_text(text: str) -> str:
    """A text cell for a CSV that spreadsheets open: a leading = + - @ (or tab, CR) is prefixed with ' (OWASP)."""
    return "'" + text if text[:1] in _FORMULA_STARTS else text


def image_file_names(loaded, indices, root=None) -> list[str] | None:
    """Per-image file names for `indices` when the images came from a folder (one file each), else None.

    Names are relative to `root` (the --data folder) where they lie under it, so that a report
    names "cats/001.png" rather than a path on the auditor's machine, and escaped (display_name).
    """
    files = getattr(loaded, "files", ())
    if getattr(loaded, "format", None) != "images" or len(files) != len(loaded.images):
        return None
    base = Path(root) if root else None
    names = []
    for index in np.asarray(indices, dtype=np.int64):
        path = Path(files[int(index)])
        try:
            names.append(display_name(path.relative_to(base).as_posix() if base is not None else path.as_posix()))
        except ValueError:
            names.append(display_name(path.as_posix()))
    return names
