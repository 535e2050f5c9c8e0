"""The experiment folder's caches: raw scores once per run identity (resumable chunks) and one JSON per regressor fit, each sealed with its hash."""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import atomic_io
from ..errors import DataError
from ..pipeline.identity import digest_json, fingerprint_array, identity_key, model_identity, score_identity
from ..pipeline.ownership import OwnedFolder
from ..pipeline.resumable import discard_chunks, score_indices
from ..safe_read import parse_json, read_bytes

# Bumped whenever what a cached fit records changes, so stale fits are never read back.
FIT_CACHE_VERSION = 2
SCORES, FITS = "scores", "fits"
CACHE_FILES = (r"scores", r"fits")
_SCORES_FILE, _META_FILE, _SEAL_FILE = "scores.npy", "meta.json", "seal.sha256"
_META_LIMIT = 1 << 20
_FIT_LIMIT = 16 << 20


def digest(obj: Any) -> str:
    return digest_json(obj)


def cache_folder(root: Path) -> OwnedFolder:
    """OUT/cache as a folder of qmia-fast's own: refused if it is a file, a link, or a folder someone else filled."""
    return OwnedFolder(Path(root), "--out", "experiment-cache", CACHE_FILES, legacy=SCORES)


class Fingerprints:
    """Model identities and array fingerprints, each computed once per object (objects are kept alive)."""

    def __init__(self):
        self._memo: dict[tuple[str, int], tuple[Any, Any]] = {}

    def _get(self, kind: str, obj, compute: Callable[[Any], Any]):
        entry = self._memo.get((kind, id(obj)))
        if entry is None or entry[0] is not obj:
            entry = (obj, compute(obj))
            self._memo[(kind, id(obj))] = entry
        return entry[1]

    def model_id(self, model) -> dict:
        return self._get("model", model, model_identity)

    def model(self, model) -> str:
        return digest_json(self.model_id(model))

    def array(self, array) -> str:
        return self._get("array", array, fingerprint_array)


class ScoreCache:
    """Raw scores under OUT/cache/scores/<label>-<key>/: scores.npy, meta.json and their seal once complete, chunks while scoring.

    The key is the run's identity (pipeline.identity: score config, execution settings, machine,
    the whole model, the exact images and their sample identities), so a changed setting lands in
    a new folder and is never mixed with old chunks. The seal hashes the key with both files'
    bytes: an edited, swapped or damaged entry is scored again, never used. A killed run leaves
    finished chunks behind; the next run computes only the missing ones.
    """

    def __init__(self, root: Path, fingerprints: Fingerprints, log: Callable[[str], None]):
        self.root = Path(root) / SCORES
        self.fingerprints = fingerprints
        self.log = log

    def scores(self, scorer, model, images: np.ndarray, ids: np.ndarray, label: str, progress: bool,
               conditions=None) -> tuple[np.ndarray, dict[str, Any]]:
        """Scores of images[i] under sample identity ids[i] (and condition conditions[i]); and {"seconds", ...}."""
        ids = np.asarray(ids, dtype=np.int64)
        identity = score_identity(scorer, model, images, ids, conditions, model_id=self.fingerprints.model_id(model),
                                  data=self.fingerprints.array(images))
        key = identity_key(identity)
        folder = self.root / f"{_slug(label)}-{key[:12]}"
        cached = self._load(folder, key, len(ids))
        if cached is not None:
            return cached[0], {**cached[1], "cached": True}
        started, report = time.perf_counter(), {}
        values = score_indices(scorer, images, np.arange(len(ids)), sample_ids=ids, work_dir=folder / "chunks",
                               identity=identity, progress=progress, log=self.log, label=f"scoring {label}",
                               report=report, option=f"the experiment cache {folder}:", conditions=conditions)
        n_todo = report["scored_now"]
        seconds = time.perf_counter() - started
        meta = {"label": label, "n": int(len(ids)), "scored_now": int(n_todo), "seconds": seconds,
                "per_image_s": seconds / n_todo if n_todo else float("nan"),
                "unet_calls_per_image": scorer.config.unet_calls, "score": scorer.config.applicable(),
                "device": str(scorer.device)}
        buffer = io.BytesIO()
        np.save(buffer, values, allow_pickle=False)
        score_bytes = buffer.getvalue()
        meta_bytes = (json.dumps(meta, default=str) + "\n").encode()
        # The seal first, as for chunks: visible files under a seal that does not match are rescored.
        atomic_io.write_text(folder / _SEAL_FILE, _seal(key, score_bytes, meta_bytes) + "\n")
        atomic_io.write_bytes(folder / _SCORES_FILE, score_bytes)
        atomic_io.write_bytes(folder / _META_FILE, meta_bytes)
        discard_chunks(folder / "chunks")
        return values, {**meta, "cached": False}

    def _load(self, folder: Path, key: str, n: int):
        paths = [folder / name for name in (_SCORES_FILE, _META_FILE, _SEAL_FILE)]
        if not all(p.exists() or p.is_symlink() for p in paths):
            return None
        try:
            score_bytes = read_bytes(paths[0], 8 * n + 4096, "cached scores")
            meta_bytes = read_bytes(paths[1], _META_LIMIT, "cached score metadata")
            seal = read_bytes(paths[2], 256, "cached score seal").decode("ascii", "replace").strip()
            if seal != _seal(key, score_bytes, meta_bytes):
                raise DataError("does not match its seal")
            values = np.load(io.BytesIO(score_bytes), allow_pickle=False)
            meta = parse_json(meta_bytes, "cached score metadata")
            if values.shape != (n,) or values.dtype != np.float64 or not isinstance(meta, dict):
                raise DataError("has the wrong shape or kind")
        except (DataError, OSError, ValueError) as exc:
            self.log(f"the cached scores in {folder} are damaged or were edited ({exc}); scoring them again")
            return None
        return values, meta


class FitCache:
    """One JSON per regressor fit under OUT/cache/fits/, keyed by a hash of its inputs and settings, sealed with its own hash."""

    def __init__(self, root: Path, log: Callable[[str], None] | None = None):
        self.root = Path(root) / FITS
        self.log = log or (lambda text: None)

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{self.key(key)[:24]}.json"

    @staticmethod
    def key(key: dict[str, Any]) -> str:
        return digest({**key, "version": FIT_CACHE_VERSION})

    def get(self, key: dict[str, Any]) -> dict | None:
        path = self.path(key)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            entry = parse_json(read_bytes(path, _FIT_LIMIT, "cached fit"), f"cached fit {path}")
            value = entry.get("value") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or entry.get("key") != self.key(key) \
                    or entry.get("sha256") != _value_seal(self.key(key), value):
                raise DataError("does not match its seal")
            if not isinstance(value, dict) or not isinstance(value.get("methods"), dict):
                raise DataError("is not a fit record")
        except (DataError, OSError) as exc:
            self.log(f"the cached fit {path} is damaged or was edited ({exc}); fitting again")
            return None
        return value

    def put(self, key: dict[str, Any], value: dict) -> None:
        # Through JSON and back first, so that the seal covers exactly what get() will read (numpy scalars as
        # plain numbers, NaN as NaN).
        value = json.loads(json.dumps(value, default=_plain))
        atomic_io.write_json(self.path(key), {"key": self.key(key), "sha256": _value_seal(self.key(key), value),
                                              "value": value})


def _plain(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _seal(key: str, score_bytes: bytes, meta_bytes: bytes) -> str:
    digest_ = hashlib.sha256(f"qmia-fast-score-cache|{key}|{len(score_bytes)}|".encode())
    digest_.update(score_bytes)
    digest_.update(meta_bytes)
    return digest_.hexdigest()


def _value_seal(key: str, value: Any) -> str:
    return hashlib.sha256(f"qmia-fast-fit|{key}|".encode() + json.dumps(value, sort_keys=True).encode()).hexdigest()


def array_digest(array) -> str:
    """sha256 of an array's bytes (small arrays: scores, indices, labels)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]


__all__ = ["ScoreCache", "FitCache", "Fingerprints", "cache_folder", "array_digest", "digest"]
