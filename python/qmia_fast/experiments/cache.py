"""The experiment folder's caches: raw scores once per score setting (resumable chunks) and one JSON per regressor fit."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import atomic_io
from ..pipeline.resumable import fingerprint_array, fingerprint_model, score_indices

# Bumped whenever what a cached fit records changes, so stale fits are never read back.
FIT_CACHE_VERSION = 2
SCORES, FITS = "scores", "fits"


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Fingerprints:
    """sha256 fingerprints of models and arrays, each computed once per object (objects are kept alive)."""

    def __init__(self):
        self._memo: dict[int, tuple[Any, str]] = {}

    def _get(self, obj, compute: Callable[[Any], str]) -> str:
        entry = self._memo.get(id(obj))
        if entry is None or entry[0] is not obj:
            entry = (obj, compute(obj))
            self._memo[id(obj)] = entry
        return entry[1]

    def model(self, model) -> str:
        return self._get(model, fingerprint_model)

    def array(self, array) -> str:
        return self._get(array, fingerprint_array)


class ScoreCache:
    """Raw scores under OUT/cache/scores/<label>-<key>/: scores.npy and meta.json once complete, chunks while scoring.

    The key hashes everything that decides the bits (score config, UNet micro-batch, device
    type, model weights, the exact images and their sample identities), so a changed setting
    lands in a new folder and is never mixed with old chunks. A killed run leaves finished
    chunks behind; the next run computes only the missing ones.
    """

    def __init__(self, root: Path, fingerprints: Fingerprints, log: Callable[[str], None]):
        self.root = Path(root) / SCORES
        self.fingerprints = fingerprints
        self.log = log

    def scores(self, scorer, model, images: np.ndarray, ids: np.ndarray, label: str, progress: bool
               ) -> tuple[np.ndarray, dict[str, Any]]:
        """Scores of images[i] under sample identity ids[i]; and {"seconds", "per_image_s", "cached", ...}."""
        ids = np.asarray(ids, dtype=np.int64)
        identity = {"score": scorer.config.to_dict(), "unet_batch": scorer.unet_batch,
                    "device_type": scorer.device.type, "model": self.fingerprints.model(model),
                    "images": self.fingerprints.array(images), "ids": fingerprint_array(ids)}
        folder = self.root / f"{_slug(label)}-{digest(identity)[:12]}"
        final, meta_path = folder / "scores.npy", folder / "meta.json"
        if final.is_file() and meta_path.is_file():
            try:
                values = np.load(final, allow_pickle=False)
                meta = json.loads(meta_path.read_text())
                if values.shape == (len(ids),) and values.dtype == np.float64:
                    return values, {**meta, "cached": True}
            except (OSError, ValueError):
                pass  # unreadable: score again
        started, report = time.perf_counter(), {}
        values = score_indices(scorer, images, np.arange(len(ids)), sample_ids=ids, work_dir=folder / "chunks",
                               identity=identity, progress=progress, log=self.log, label=f"scoring {label}",
                               report=report)
        n_todo = report["scored_now"]
        seconds = time.perf_counter() - started
        meta = {"label": label, "n": int(len(ids)), "scored_now": int(n_todo), "seconds": seconds,
                "per_image_s": seconds / n_todo if n_todo else float("nan"),
                "unet_calls_per_image": scorer.config.unet_calls, "score": scorer.config.applicable(),
                "device": str(scorer.device)}
        atomic_io.save_npy(final, values)
        atomic_io.write_json(meta_path, meta)
        shutil.rmtree(folder / "chunks", ignore_errors=True)
        return values, {**meta, "cached": False}


class FitCache:
    """One JSON per regressor fit under OUT/cache/fits/, keyed by a hash of its inputs and settings."""

    def __init__(self, root: Path):
        self.root = Path(root) / FITS

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{digest({**key, 'version': FIT_CACHE_VERSION})[:24]}.json"

    def get(self, key: dict[str, Any]) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: dict[str, Any], value: dict) -> None:
        atomic_io.write_json(self.path(key), value)


def array_digest(array) -> str:
    """sha256 of an array's bytes (small arrays: scores, indices, labels)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]
