"""`qmia-fast evaluate`: metrics, report.json and ROC plots from membership scores and labels in npz/npy/csv files."""
from __future__ import annotations

import csv
import time
import zipfile
from pathlib import Path

import click
import numpy as np

from ..errors import DataError, InputError

_SCORE_KEYS = ("scores", "score")
_LABEL_KEYS = ("labels", "label")
_METHOD_PREFIX = "membership_"  # per-method scores in a scores.npz written by `qmia-fast attack`


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{str(path)!r} is not a readable .npy array ({exc})") from None


def _pick(keys, candidates, path, what):
    for key in candidates:
        if key in keys:
            return key
    raise DataError(f"{str(path)!r} has no {what} array: expected a key named {' or '.join(candidates)} "
                    f"(found {', '.join(sorted(keys)) or 'nothing'})")


def _load_npz(path: Path) -> tuple[dict, np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{str(path)!r} is not a readable .npz archive ({exc})") from None
    labels = arrays[_pick(arrays, _LABEL_KEYS, path, "labels")]
    if any(key in arrays for key in _SCORE_KEYS):
        return {"scores": arrays[_pick(arrays, _SCORE_KEYS, path, "scores")]}, labels, {}
    methods = {key[len(_METHOD_PREFIX):]: value for key, value in arrays.items() if key.startswith(_METHOD_PREFIX)}
    if not methods:
        _pick(arrays, _SCORE_KEYS, path, "scores")  # raises with the list of keys found
    # The attack's fixed decisions at alpha travel with its scores, so their rates can be recomputed.
    decisions = {name: arrays[f"decision_{name}"] for name in methods if f"decision_{name}" in arrays}
    return methods, labels, decisions


def _load_csv(path: Path) -> tuple[dict, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            score_col = _pick(fields, _SCORE_KEYS, path, "score column")
            label_col = _pick(fields, _LABEL_KEYS, path, "label column")
            original = dict(zip(fields, reader.fieldnames or []))
            scores, labels = [], []
            for line_number, row in enumerate(reader, start=2):
                try:
                    scores.append(float(row[original[score_col]]))
                    labels.append(float(row[original[label_col]]))
                except (TypeError, ValueError):
                    raise DataError(f"{str(path)!r} line {line_number}: score and label must be numbers, "
                                    f"got {row.get(original[score_col])!r}, {row.get(original[label_col])!r}") from None
    except UnicodeDecodeError:
        raise DataError(f"{str(path)!r} is not a UTF-8 text CSV file") from None
    return {"scores": np.asarray(scores, dtype=np.float64)}, np.asarray(labels, dtype=np.float64), {}


def load_scores_labels(paths) -> tuple[dict, np.ndarray, dict]:
    """One .npz, one .csv, one N x 2 .npy, or two .npy files (scores, labels).

    Returns ({name: scores}, labels, {name: fixed decision}); decisions come only from a
    scores.npz written by `qmia-fast attack`.
    """
    paths = [Path(p) for p in paths]
    suffixes = [p.suffix.lower() for p in paths]
    if len(paths) == 2:
        if suffixes != [".npy", ".npy"]:
            raise InputError("two inputs must be two .npy files: scores first, then labels")
        return {"scores": _load_npy(paths[0])}, _load_npy(paths[1]), {}
    if len(paths) != 1:
        raise InputError("pass one file (.npz, .csv or an N x 2 .npy) or two .npy files (scores, labels)")
    path, suffix = paths[0], suffixes[0]
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".npy":
        table = _load_npy(path)
        if table.ndim != 2 or table.shape[1] != 2:
            raise InputError(f"a single .npy input must be an N x 2 array of (score, label) rows, "
                             f"got shape {table.shape}; or pass scores and labels as two .npy files")
        return {"scores": table[:, 0]}, table[:, 1], {}
    raise InputError(f"{str(path)!r}: unsupported file type {suffix or '(none)'}; use .npz, .npy or .csv")


@click.command("evaluate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--higher-is-member/--lower-is-member", default=True, show_default=True,
              help="Direction of plain scores. Raw t-errors and losses are lower = member; "
                   "the membership_* scores an attack writes are always higher = member.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Also report the fixed decision 'member iff score is above the threshold at this "
                   "FPR on the non-members', with its observed FPR and TPR.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.json, scores.npz, roc.png and roc_log.png here (default: print only).")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw ROC plots (needs matplotlib).")
def evaluate(inputs, higher_is_member, alpha, out_dir, plots):
    """Exact ROC metrics of membership scores against labels (1 = member).

    INPUTS: scores.npz (keys scores and labels, or the membership_* arrays a
    `qmia-fast attack` run wrote), table.csv (header with columns score,label),
    pairs.npy (N x 2), or scores.npy labels.npy.
    """
    from .. import metrics, report as reporting

    started = time.perf_counter()
    methods, labels, decisions = load_scores_labels(inputs)
    labels_arr = metrics.check_labels(labels)
    results = {}
    for name, scores in methods.items():
        values, _ = metrics.check_scores_labels(scores, labels_arr)
        if name == "scores" and not higher_is_member:
            values = -values
        decision = decisions.get(name)
        if alpha is not None and (labels_arr == 0).any():
            # The threshold a user of this score would set from non-members at FPR alpha.
            threshold = np.quantile(values[labels_arr == 0], 1.0 - alpha)
            decision = values > threshold
        results[name] = (values, decision)
    n_members = int(labels_arr.sum())
    if n_members == 0 or n_members == labels_arr.shape[0]:
        kind = "non-members (0)" if n_members == 0 else "members (1)"
        raise InputError(f"labels: all {labels_arr.shape[0]} samples are {kind}; "
                         "a ROC needs at least one member and one non-member")
    config = {"inputs": [str(p) for p in inputs],
              "direction": "higher_is_member" if higher_is_member else "lower_is_member"}
    built = reporting.build_report(results, labels_arr, config=config, alpha=alpha,
                                   timings={"evaluate_s": time.perf_counter() - started})
    click.echo(reporting.format_summary_table(built))
    if out_dir is not None:
        arrays = reporting.score_arrays(results, labels_arr)
        written = reporting.write_report(out_dir, built, arrays, plots=plots)
        click.echo(f"wrote {', '.join(str(p) for p in written['files'])}")
        if written["note"]:
            click.echo(written["note"], err=True)
