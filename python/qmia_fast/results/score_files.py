"""Score files: raw scores written with their direction and settings (npz, csv + sidecar), and read back, bounded, for evaluation."""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import atomic_io
from ..data.formats import NpzReader, read_array_file, read_npz_arrays
from ..errors import ConfigError, DataError, InputError
from .csv_reading import check_sidecar_hash, read_csv_columns, read_csv_sidecar
from .interop import csv_sidecar_path, csv_text, write_csv_sidecar

FORMAT = "qmia-fast/scores"
VERSION = 1
SUFFIXES = (".npz", ".csv", ".npy")
DIRECTIONS = ("lower_is_member", "higher_is_member")
_CSV_MARK = "# " + FORMAT + " "  # how files of earlier releases began; still read
sidecar_path = csv_sidecar_path


def score_metadata(direction: str, **fields_) -> dict[str, Any]:
    """The metadata block a score file carries: format, version, direction, and what produced the scores."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction = {direction!r} must be one of {', '.join(DIRECTIONS)}")
    return {"format": FORMAT, "version": VERSION, "direction": direction, **fields_}


def write_scores(out, scores: np.ndarray, indices: np.ndarray, metadata: Mapping[str, Any],
                 files: Sequence[str] | None = None, labels: np.ndarray | None = None) -> Path:
    """Write raw scores to .npz (scores, indices, metadata[, files, labels]), .csv (index,score[,label][,file],
    with the metadata in NAME.csv.json beside it) or .npy (the bare float64 array: no metadata)."""
    out = Path(out)
    suffix = out.suffix.lower()
    values = np.asarray(scores, dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    if suffix == ".npy":
        atomic_io.save_npy(out, values)
    elif suffix == ".npz":
        arrays = {"scores": values, "indices": indices,
                  "metadata": np.array(json.dumps(dict(metadata), default=str))}
        if files is not None:
            arrays["files"] = np.asarray(list(files), dtype=str)
        if labels is not None:
            arrays["labels"] = np.asarray(labels, dtype=np.int8)
        atomic_io.save_npz(out, **arrays)
    elif suffix == ".csv":
        header = ["index", "score"] + (["label"] if labels is not None else []) + (["file"] if files is not None else [])
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for row in range(len(values)):
            cells = [str(int(indices[row])), repr(float(values[row]))]
            if labels is not None:
                cells.append(str(int(labels[row])))
            if files is not None:
                cells.append(csv_text(str(files[row])))
            writer.writerow(cells)
        atomic_io.write_text(out, buffer.getvalue())
        # The metadata lives beside the CSV, which stays plain (csv.DictReader and pandas read it as it is).
        write_csv_sidecar(out, dict(metadata))
    else:
        raise InputError(f"{out}: score files are .npz, .csv or .npy")
    return out


@dataclass
class ScoreTable:
    """Scores read from files: one or more named score columns, labels, optional fixed decisions, and metadata.

    `directions` says, per score column, which way it points ("lower_is_member",
    "higher_is_member", or None where the file does not say); `arrays` holds the other
    per-sample arrays a file carried (indices, raw_scores, votes, bag_threshold).
    """

    scores: dict[str, np.ndarray]
    labels: np.ndarray | None
    decisions: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    directions: dict[str, str | None] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def direction(self) -> str | None:
        """The direction of the plain scores as recorded in the file, or None when the file does not say."""
        return self.metadata.get("direction")

    def membership_scores(self, direction: str | None = None) -> dict[str, np.ndarray]:
        """Every score column turned to higher = member, as metrics expect.

        direction: what the caller states about the plain scores ("lower_is_member" or
        "higher_is_member"), or None to rely on the file. A column whose file does not say is
        a ConfigError unless a direction is stated; a stated direction that contradicts the
        file's is a ConfigError too.
        """
        if direction is not None and direction not in DIRECTIONS:
            raise InputError(f"direction = {direction!r} must be one of {', '.join(DIRECTIONS)}")
        where = " + ".join(self.sources) or "the score file"
        out = {}
        for name, values in self.scores.items():
            recorded = self.directions.get(name)
            if recorded is None and direction is None:
                raise ConfigError(f"{where} does not say which way its scores point: pass --lower-is-member "
                                  "(raw scores as `qmia-fast score` writes them, t-errors, losses) or "
                                  "--higher-is-member (membership scores, probabilities)")
            if recorded is not None and direction is not None and recorded != direction:
                option = "--" + direction.replace("_", "-")
                what = "scores" if name == "scores" else f"{name} scores"
                raise ConfigError(f"{option} contradicts {where}: its {what} are recorded as "
                                  f"{recorded.replace('_', '-')}; drop {option}")
            values = np.asarray(values)
            if values.dtype.kind not in "iuf":
                raise DataError(f"{where}: {name} must be numeric, got dtype {values.dtype}")
            values = values.astype(np.float64)
            out[name] = -values if (recorded or direction) == "lower_is_member" else values
        return out

    def resolved_direction(self, direction: str | None = None) -> str | None:
        """The one direction all score columns point in (as recorded, else as stated), or None if they differ."""
        found = {self.directions.get(name) or direction for name in self.scores}
        return found.pop() if len(found) == 1 else None

    def score_array_options(self, direction: str | None = None) -> dict[str, np.ndarray]:
        """Keyword arguments for report.score_arrays from what the file carried: indices, raw scores (lower =
        member: an audit's raw_scores, or the plain scores of a lower-is-member file), votes, bag thresholds."""
        options: dict[str, np.ndarray] = {}
        if "indices" in self.arrays:
            options["indices"] = self.arrays["indices"]
        raw = self.arrays.get("raw_scores")
        if raw is None and list(self.scores) == ["scores"] \
                and (self.directions.get("scores") or direction) == "lower_is_member":
            raw = self.scores["scores"]
        if raw is not None:
            options["raw_scores"] = raw
        if "votes" in self.arrays:
            options["votes"] = self.arrays["votes"]
        if "bag_threshold" in self.arrays:
            options["thresholds"] = np.asarray(self.arrays["bag_threshold"])[None, :]
        return options


# Per-sample arrays of an audit's scores.npz that evaluate carries into its own outputs.
_EXTRA_KEYS = ("indices", "raw_scores", "votes", "bag_threshold")
_SCORE_KEYS = ("scores", "score")
_LABEL_KEYS = ("labels", "label")
_METHOD_PREFIX = "membership_"   # per-method scores (higher = member) in the scores.npz an audit writes
_DECISION_PREFIX = "decision_"   # the attack's fixed decision at alpha for that method
_WHERE = "score file"
_MAX_METADATA_CHARS = 1 << 20
_VOTE_LIMIT = 2**31 - 1
# An audit's scores.csv: its columns and the arrays they become.
_CSV_EXTRAS = {"index": ("indices", "integer"), "raw_score": ("raw_scores", "optional"),
               "votes": ("votes", "integer"), "bag_threshold": ("bag_threshold", "optional")}
_PRIMARY = "qmia_bag"  # what an audit's membership_score is, in files without a sidecar naming it


def read_score_table(paths: Sequence) -> ScoreTable:
    """Read scores and labels for evaluation, through the bounded readers (no pickle, sizes checked first).

    Accepts one .npz (scores + labels, as `qmia-fast score --split` writes them, or the
    membership_* and decision_* arrays of an audit's scores.npz), one .csv (score,label
    columns, with its metadata in NAME.csv.json or, from earlier releases, on a first
    `# qmia-fast/scores {json}` line; or an audit's scores.csv with a membership column per
    method), one N x 2 .npy of (score, label) rows, or two .npy files (scores, labels). Bare
    arrays carry no direction; see ScoreTable.membership_scores. Every per-sample array must
    have one entry per label, and a file that contradicts itself is refused.
    """
    paths = [Path(p) for p in paths]
    suffixes = [p.suffix.lower() for p in paths]
    if len(paths) == 2:
        if suffixes != [".npy", ".npy"]:
            raise InputError("two inputs must be two .npy files: scores first, then labels")
        scores = read_array_file(paths[0], where=_WHERE)
        labels = read_array_file(paths[1], where=_WHERE)
        _require_1d(scores, paths[0], "scores")
        _require_1d(labels, paths[1], "labels")
        table = ScoreTable({"scores": scores}, labels, directions={"scores": None})
    elif len(paths) != 1:
        raise InputError("pass one file (.npz, .csv or an N x 2 .npy) or two .npy files (scores, labels)")
    elif suffixes[0] == ".npz":
        table = _read_npz(paths[0])
    elif suffixes[0] == ".csv":
        table = _read_csv(paths[0])
    elif suffixes[0] == ".npy":
        pairs = read_array_file(paths[0], where=_WHERE)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise InputError(f"a single .npy input must be an N x 2 array of (score, label) rows, got shape "
                             f"{pairs.shape}; or pass scores and labels as two .npy files")
        table = ScoreTable({"scores": pairs[:, 0]}, pairs[:, 1], directions={"scores": None})
    else:
        raise InputError(f"{str(paths[0])!r}: unsupported file type {suffixes[0] or '(none)'}; use .npz, .npy or .csv")
    table.sources = [str(p) for p in paths]
    _check_lengths(table, " + ".join(table.sources))
    return table


def _check_lengths(table: ScoreTable, where: str) -> None:
    n = len(table.labels)
    for kind, group in (("scores", table.scores), ("decisions", table.decisions), ("arrays", table.arrays)):
        for name, values in group.items():
            if len(values) != n:
                label = name if kind != "scores" or name == "scores" else f"membership_{name}"
                raise DataError(f"{_WHERE} {where}: labels has {n} entries but {label} has {len(values)}; "
                                "give one label per score")


def _require_1d(array: np.ndarray, path: Path, what: str) -> None:
    if array.ndim != 1:
        raise InputError(f"{_WHERE} {path}: {what} must be a 1-D array, got shape {array.shape}")


def _pick(keys, candidates, path, what) -> str:
    for key in candidates:
        if key in keys:
            return key
    raise DataError(f"{_WHERE} {path} has no {what}: expected {' or '.join(candidates)} "
                    f"(found {', '.join(sorted(keys)) or 'nothing'})")


def _check_metadata(metadata: Any, path: Path) -> dict[str, Any]:
    """A score file's metadata, or a DataError naming what in it is wrong (never trusted as it is)."""
    if not isinstance(metadata, dict):
        raise DataError(f"{_WHERE} {path}: its metadata must be a JSON object; re-create the file")
    for key in ("direction", "membership_direction", "raw_direction"):
        value = metadata.get(key)
        if value is not None and value not in DIRECTIONS:
            raise DataError(f"{_WHERE} {path}: its metadata gives {key} {value!r}, not one of "
                            f"{', '.join(DIRECTIONS)}; fix or re-create the file")
    if metadata.get("membership_direction") not in (None, "higher_is_member"):
        raise DataError(f"{_WHERE} {path}: its metadata says membership scores are lower-is-member, but they are "
                        "higher-is-member by definition; re-create the file")
    alpha = metadata.get("alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
                              or not math.isfinite(alpha) or not 0 < alpha < 1):
        raise DataError(f"{_WHERE} {path}: its metadata gives alpha = {alpha!r:.40}, not a number strictly between "
                        "0 and 1; fix or re-create the file")
    return metadata


def _parse_metadata(text: str, path: Path) -> dict[str, Any]:
    if len(text) > _MAX_METADATA_CHARS:
        raise DataError(f"{_WHERE} {path}: its metadata is {len(text)} characters long; this is not a score file")
    from ..safe_read import parse_json

    return _check_metadata(parse_json(text, f"{_WHERE} {path}: its metadata"), path)


def _numeric(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{_WHERE} {path}: {key} must be numeric, got dtype {array.dtype}; re-create the file")
    if key == "votes":
        values = array.astype(np.float64)
        if not (np.isfinite(values).all() and (values == np.round(values)).all() and (values >= 0).all()
                and (values <= _VOTE_LIMIT).all()):
            raise DataError(f"{_WHERE} {path}: votes must be whole numbers from 0 to the bag size; re-create the file")
        return values.astype(np.int64)
    if key == "indices" and array.dtype.kind == "f" and not (array == np.round(array)).all():
        raise DataError(f"{_WHERE} {path}: indices must be whole numbers; re-create the file")
    return array


def _read_npz(path: Path) -> ScoreTable:
    with NpzReader(path, where=_WHERE) as npz:
        keys = npz.keys()
    metadata = {}
    if "metadata" in keys:
        raw = read_npz_arrays(path, where=_WHERE, keys=["metadata"])["metadata"]
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise DataError(f"{_WHERE} {path}: 'metadata' must be one JSON string; re-create the file")
        metadata = _parse_metadata(str(raw), path)
    label_key = _pick(keys, _LABEL_KEYS, path, "labels array (score with --split or --members so that the "
                                               "file carries labels, or pass scores.npy labels.npy)")
    methods = [key for key in keys if key.startswith(_METHOD_PREFIX)]
    plain = [key for key in _SCORE_KEYS if key in keys]
    if plain and methods:
        raise DataError(f"{_WHERE} {path} holds both {plain[0]} and {methods[0]}: which one to evaluate is "
                        "ambiguous; keep one kind of score array")
    if plain:
        score_key = plain[0]
        wanted = [score_key, label_key]
        names = {score_key: "scores"}
        directions = {"scores": metadata.get("direction")}
        decision_keys = []
    elif methods:
        if metadata.get("direction") == "lower_is_member":
            raise DataError(f"{_WHERE} {path}: its metadata says lower-is-member, but membership_* scores are "
                            "higher-is-member by definition; fix or re-create the file")
        names = {key: key[len(_METHOD_PREFIX):] for key in methods}
        # The attack's membership scores are higher = member by definition, whatever else the file holds.
        directions = {name: "higher_is_member" for name in names.values()}
        decision_keys = [_DECISION_PREFIX + name for name in names.values() if _DECISION_PREFIX + name in keys]
        wanted = methods + [label_key] + decision_keys
    else:
        raise DataError(f"{_WHERE} {path} has no scores array: expected scores, score or membership_<method> "
                        f"(found {', '.join(sorted(keys))})")
    extras = [key for key in _EXTRA_KEYS if key in keys]
    arrays = read_npz_arrays(path, where=_WHERE, keys=wanted + extras)
    labels = arrays[label_key]
    for key in wanted + extras:
        _require_1d(arrays[key], path, key)
    return ScoreTable({name: arrays[key] for key, name in names.items()}, labels,
                      decisions={key[len(_DECISION_PREFIX):]: arrays[key] for key in decision_keys},
                      metadata=metadata, directions=directions,
                      arrays={key: _numeric(arrays[key], path, key) for key in extras})


def _read_csv(path: Path) -> ScoreTable:
    sidecar = read_csv_sidecar(path, _WHERE)
    layout: dict[str, Any] = {}

    def choose(columns: list[str], old_metadata: dict) -> dict[int, tuple[str, str]]:
        metadata = _check_metadata(sidecar["metadata"] if sidecar is not None else old_metadata, path)
        layout["metadata"] = metadata
        methods = {}
        if "membership_score" in columns:
            primary = metadata.get("primary_method") or (_PRIMARY if any(
                c.startswith(_METHOD_PREFIX) and c != "membership_score" for c in columns) else "scores")
            methods[str(primary)] = "membership_score"
        methods.update({c[len(_METHOD_PREFIX):]: c for c in columns
                        if c.startswith(_METHOD_PREFIX) and c != "membership_score"})
        score = None if methods else _pick(columns, _SCORE_KEYS, path, "score column")
        chosen = {columns.index(_pick(columns, _LABEL_KEYS, path, "label column")): ("labels", "number")}
        if methods:
            if metadata.get("direction") == "lower_is_member":
                raise DataError(f"{_WHERE} {path}: its metadata says lower-is-member, but it has membership "
                                "columns, which are higher-is-member by definition; fix or re-create the file")
            layout["directions"] = {name: "higher_is_member" for name in methods}
            for name, column in methods.items():
                chosen[columns.index(column)] = ("score:" + name, "number")
                decision = "decision" if column == "membership_score" else f"decision_{name}"
                if decision in columns:
                    chosen[columns.index(decision)] = ("decision:" + name, "integer")
            for column, (key, kind) in _CSV_EXTRAS.items():
                if column in columns:
                    chosen[columns.index(column)] = ("extra:" + key, kind)
        else:
            chosen[columns.index(score)] = ("score:scores", "number")
            layout["directions"] = {"scores": metadata.get("direction")}
        return chosen

    values, _, digest = read_csv_columns(path, _WHERE, choose, _CSV_MARK)
    check_sidecar_hash(sidecar, digest, path, _WHERE)
    table = ScoreTable({k[6:]: v for k, v in values.items() if k.startswith("score:")}, values["labels"],
                       metadata=layout["metadata"], directions=layout["directions"])
    table.decisions = {k[9:]: v.astype(np.int64) for k, v in values.items() if k.startswith("decision:")}
    table.arrays = {k[6:]: _numeric(v, path, k[6:]) for k, v in values.items() if k.startswith("extra:")}
    if "indices" in table.arrays:
        table.arrays["indices"] = table.arrays["indices"].astype(np.int64)
    return table
