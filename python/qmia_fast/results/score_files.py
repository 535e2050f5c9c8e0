"""Score files: raw scores written with their direction and settings (npz, csv), and read back, with that metadata, for evaluation."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import atomic_io
from ..data.formats import NpzReader, open_regular_file, read_array_file, read_npz_arrays
from ..errors import ConfigError, DataError, InputError

FORMAT = "qmia-fast/scores"
VERSION = 1
SUFFIXES = (".npz", ".csv", ".npy")
DIRECTIONS = ("lower_is_member", "higher_is_member")
_CSV_MARK = "# " + FORMAT + " "


def score_metadata(direction: str, **fields_) -> dict[str, Any]:
    """The metadata block a score file carries: format, version, direction, and what produced the scores."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction = {direction!r} must be one of {', '.join(DIRECTIONS)}")
    return {"format": FORMAT, "version": VERSION, "direction": direction, **fields_}


def write_scores(out, scores: np.ndarray, indices: np.ndarray, metadata: Mapping[str, Any],
                 files: Sequence[str] | None = None, labels: np.ndarray | None = None) -> Path:
    """Write raw scores to .npz (scores, indices, metadata[, files, labels]), .csv (metadata line, then
    index,score[,label][,file]) or .npy (the bare float64 array: no metadata)."""
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
        lines = [_CSV_MARK + json.dumps(dict(metadata), default=str), ",".join(header)]
        for row in range(len(values)):
            cells = [str(int(indices[row])), repr(float(values[row]))]
            if labels is not None:
                cells.append(str(int(labels[row])))
            if files is not None:
                cells.append(_csv_cell(str(files[row])))
            lines.append(",".join(cells))
        atomic_io.write_text(out, "\n".join(lines) + "\n")
    else:
        raise InputError(f"{out}: score files are .npz, .csv or .npy")
    return out


def _csv_cell(text: str) -> str:
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


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
                raise ConfigError(f"{option} contradicts {where}: its {name} scores are recorded as "
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
# A CSV score file is read whole; this bounds it (tens of millions of rows).
MAX_CSV_BYTES = 1 << 30
_MAX_METADATA_CHARS = 1 << 20


def read_score_table(paths: Sequence) -> ScoreTable:
    """Read scores and labels for evaluation, through the bounded readers (no pickle, sizes checked first).

    Accepts one .npz (scores + labels, as `qmia-fast score --split` writes them, or the
    membership_* and decision_* arrays of an audit's scores.npz), one .csv (score,label
    columns, after an optional `# qmia-fast/scores {json}` line; or an audit's scores.csv
    with membership_score,label), one N x 2 .npy of (score, label) rows, or two .npy files
    (scores, labels). Bare arrays carry no direction; see ScoreTable.membership_scores.
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
        return ScoreTable({"scores": scores}, labels, directions={"scores": None}, sources=[str(p) for p in paths])
    if len(paths) != 1:
        raise InputError("pass one file (.npz, .csv or an N x 2 .npy) or two .npy files (scores, labels)")
    path, suffix = paths[0], suffixes[0]
    if suffix == ".npz":
        table = _read_npz(path)
    elif suffix == ".csv":
        table = _read_csv(path)
    elif suffix == ".npy":
        pairs = read_array_file(path, where=_WHERE)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise InputError(f"a single .npy input must be an N x 2 array of (score, label) rows, got shape "
                             f"{pairs.shape}; or pass scores and labels as two .npy files")
        table = ScoreTable({"scores": pairs[:, 0]}, pairs[:, 1], directions={"scores": None})
    else:
        raise InputError(f"{str(path)!r}: unsupported file type {suffix or '(none)'}; use .npz, .npy or .csv")
    table.sources = [str(path)]
    return table


def _require_1d(array: np.ndarray, path: Path, what: str) -> None:
    if array.ndim != 1:
        raise InputError(f"{_WHERE} {path}: {what} must be a 1-D array, got shape {array.shape}")


def _pick(keys, candidates, path, what) -> str:
    for key in candidates:
        if key in keys:
            return key
    raise DataError(f"{_WHERE} {path} has no {what}: expected {' or '.join(candidates)} "
                    f"(found {', '.join(sorted(keys)) or 'nothing'})")


def _parse_metadata(text: str, path: Path) -> dict[str, Any]:
    if len(text) > _MAX_METADATA_CHARS:
        raise DataError(f"{_WHERE} {path}: its metadata is {len(text)} characters long; this is not a score file")
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{_WHERE} {path}: its metadata is not valid JSON ({exc}); re-create the file") from None
    if not isinstance(metadata, dict):
        raise DataError(f"{_WHERE} {path}: its metadata must be a JSON object; re-create the file")
    direction = metadata.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise DataError(f"{_WHERE} {path}: its metadata gives direction {direction!r}, not one of "
                        f"{', '.join(DIRECTIONS)}; fix or re-create the file")
    return metadata


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
    if any(key in keys for key in _SCORE_KEYS):
        score_key = _pick(keys, _SCORE_KEYS, path, "scores array")
        wanted = [score_key, label_key]
        names = {score_key: "scores"}
        directions = {"scores": metadata.get("direction")}
        decision_keys = []
    elif methods:
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
                      metadata=metadata, directions=directions, arrays={key: arrays[key] for key in extras})


def _read_csv(path: Path) -> ScoreTable:
    try:
        with open_regular_file(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_CSV_BYTES:
                raise DataError(f"{_WHERE} {path}: {size} bytes, more than the {MAX_CSV_BYTES} bytes read from a "
                                "CSV score file; write the scores as .npz instead")
            text = handle.read(MAX_CSV_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{_WHERE} {path}: not a UTF-8 text CSV file") from None
    except DataError as exc:
        message = str(exc)
        raise DataError(message if message.startswith(_WHERE) else f"{_WHERE} {path}: {message}") from None
    except OSError as exc:
        raise DataError(f"{_WHERE} {path}: cannot be read ({exc.strerror or exc})") from None
    lines = text.splitlines(keepends=True)
    metadata, first = {}, 0
    if lines and lines[0].startswith("#"):
        if not lines[0].startswith(_CSV_MARK):
            raise DataError(f"{_WHERE} {path}: its first line is a comment but not a `{_CSV_MARK.strip()}` "
                            "metadata line; remove it")
        metadata = _parse_metadata(lines[0][len(_CSV_MARK):], path)
        first = 1
    reader = csv.reader(lines[first:])
    header = next(reader, None)
    if not header:
        raise DataError(f"{_WHERE} {path} is empty: expected a header line with score,label columns")
    columns = [name.strip().lower() for name in header]
    if "membership_score" in columns:
        score_col, direction = columns.index("membership_score"), "higher_is_member"
    else:
        score_col, direction = columns.index(_pick(columns, _SCORE_KEYS, path, "score column")), \
            metadata.get("direction")
    label_col = columns.index(_pick(columns, _LABEL_KEYS, path, "label column"))
    decision_col = columns.index("decision") if "decision" in columns and direction == "higher_is_member" else None
    scores, labels, decisions = [], [], []
    for line_number, row in enumerate(reader, start=first + 2):
        if not row:
            continue
        try:
            scores.append(float(row[score_col]))
            labels.append(float(row[label_col]))
            if decision_col is not None:
                decisions.append(int(row[decision_col]))
        except (IndexError, TypeError, ValueError):
            raise DataError(f"{_WHERE} {path} line {line_number}: score and label must be numbers, got "
                            f"{','.join(row)[:80]!r}") from None
    table = ScoreTable({"scores": np.asarray(scores, dtype=np.float64)}, np.asarray(labels, dtype=np.float64),
                       metadata=metadata, directions={"scores": direction})
    if decision_col is not None:
        table.decisions["scores"] = np.asarray(decisions)
    return table
