"""Score files: raw scores written with their direction and settings (npz, csv), and read back, with that metadata, for evaluation."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import atomic_io
from .errors import DataError, InputError

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
    """Scores read from files: one or more named score columns, labels, optional fixed decisions, and metadata."""

    scores: dict[str, np.ndarray]
    labels: np.ndarray | None
    decisions: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def direction(self) -> str | None:
        """The direction of the plain scores as recorded in the file, or None when the file does not say."""
        return self.metadata.get("direction")
