"""Resumable, shardable scoring: scores written chunk by chunk beside a manifest, so a killed run redoes only missing chunks."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import atomic_io
from ..distributed import Context, barrier, gather_to_main
from ..errors import InputError, ResumeMismatchError
from ..progress import progress_bar
from ..scoring.conditions import take

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def fingerprint_array(array) -> str:
    """sha256 of an array's dtype, shape and bytes (streamed, so big data sets never get copied)."""
    digest = hashlib.sha256()
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    digest.update(f"{array.dtype.str}|{array.shape}|".encode())
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, (1 << 24) // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        digest.update(flat[start:start + step].tobytes())
    return digest.hexdigest()


def fingerprint_model(model) -> str:
    """sha256 over the network's state dict (names, dtypes, shapes, values) and its schedule."""
    digest = hashlib.sha256()
    net = getattr(model, "net", model)
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(fingerprint_array(tensor.detach().to("cpu")).encode())
    schedule = getattr(model, "schedule", None)
    if schedule is not None:
        digest.update(np.asarray(schedule.betas, dtype=np.float64).tobytes())
    return digest.hexdigest()


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + chunk_size)) for start in range(0, n, chunk_size)]


class ChunkStore:
    """A folder of score chunks for one (config, model, data) fingerprint.

    The manifest records the fingerprint; a folder made for anything else is refused,
    never mixed. Each chunk is an .npy written atomically, then its sha256 beside it
    (chunk_i.npy.sha256), so after a kill -9 a chunk is either complete or absent, and a
    chunk whose bytes were changed since (or that has no recorded hash) is computed again.
    """

    def __init__(self, folder: str | Path, identity: dict[str, Any], n: int, chunk_size: int):
        self.folder = Path(folder)
        self.identity = identity
        self.n = int(n)
        self.chunk_size = int(chunk_size)
        self.bounds = chunk_bounds(self.n, self.chunk_size)
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    def open(self) -> "ChunkStore":
        """Create the folder and manifest, or check that an existing one matches."""
        manifest_path = self.folder / MANIFEST
        manifest = {"format": "qmia-fast-scores", "version": FORMAT_VERSION, "key": self.key,
                    "n": self.n, "chunk_size": self.chunk_size, "identity": self.identity}
        if manifest_path.exists():
            try:
                existing = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError):
                raise ResumeMismatchError(
                    f"{manifest_path} is unreadable; delete {self.folder} or choose another output folder"
                ) from None
            if existing.get("key") != self.key or existing.get("n") != self.n or \
                    existing.get("chunk_size") != self.chunk_size:
                differs = _differences(existing.get("identity", {}), self.identity)
                if existing.get("chunk_size") != self.chunk_size:
                    differs.append("chunk_size")
                raise ResumeMismatchError(
                    f"{self.folder} holds partial scores of a different run (differs in: "
                    f"{', '.join(differs) or 'unknown'}); use a fresh --out folder, or pass --overwrite to discard them"
                )
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_io.write_json(manifest_path, manifest)
        return self

    def chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npy"

    def hash_path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npy.sha256"

    def load_chunk(self, i: int) -> np.ndarray | None:
        path, recorded = self.chunk_path(i), self.hash_path(i)
        if not path.exists() or not recorded.exists():
            return None
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != recorded.read_text().strip():
                return None  # altered or torn: recompute it
            values = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable: recompute it
        start, end = self.bounds[i]
        if values.shape != (end - start,) or values.dtype != np.float64:
            return None
        return values

    def write_chunk(self, i: int, values: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(values, dtype=np.float64))
        data = buffer.getvalue()
        # The hash first: a chunk file that is visible is a finished chunk (a kill between the two
        # writes leaves a hash without its chunk, which is recomputed).
        atomic_io.write_text(self.hash_path(i), hashlib.sha256(data).hexdigest() + "\n")
        atomic_io.write_bytes(self.chunk_path(i), data)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [key for key in keys if json.dumps(old.get(key), sort_keys=True, default=str)
            != json.dumps(new.get(key), sort_keys=True, default=str)]


def default_chunk_size(batch_size: int) -> int:
    """Chunks of whole scoring steps, about 1024 images."""
    return batch_size * max(1, 1024 // batch_size)


def fingerprint_conditions(conditions) -> str | None:
    """sha256 of per-image conditions (int64 labels, or captions as UTF-8 with their lengths), None for none."""
    if conditions is None:
        return None
    if isinstance(conditions, np.ndarray):
        return fingerprint_array(conditions)
    digest = hashlib.sha256(b"captions|")
    for caption in conditions:
        data = str(caption).encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def score_identity(scorer, model, images, indices, conditions=None) -> dict[str, Any]:
    """What decides the bits of a run's scores: a resumed run must match it exactly.

    The batch size, the threads and the sharding are not in it: a sample's score does not
    depend on them; the run plan's bit-relevant settings (precision, micro-batches, layout,
    layers, the machine) are, and so are each image's condition and the condition mode.
    """
    return {"score": scorer.config.to_dict(), "plan": scorer.plan.bit_identity(),
            "condition": scorer.conditions.describe(), "conditions": fingerprint_conditions(conditions),
            "model": fingerprint_model(model), "data": fingerprint_array(images),
            "indices": fingerprint_array(indices)}


def score_indices(scorer, images, indices, *, work_dir: str | Path | None, identity: dict[str, Any],
                  ctx: Context | None = None, chunk_size: int | None = None, progress: bool = False,
                  overwrite: bool = False, log=None, sample_ids=None, label: str | None = None,
                  report: dict[str, Any] | None = None, conditions=None) -> np.ndarray | None:
    """Scores (float64, in the order of `indices`) of images[indices], chunked, resumable and sharded.

    Chunk i covers positions [i*chunk_size, (i+1)*chunk_size) of `indices`; rank r of W
    computes the chunks with i % W == r. Every image is scored under its global index
    (`sample_ids[i]` instead of `indices[i]` where given, e.g. altered copies keep their
    originals' noise), so the bits do not depend on the chunking or the ranks. With work_dir,
    finished chunks are saved and reused on the next run; the caller removes work_dir once
    the final output is safely written. Images are validated before any UNet call. `label`
    names the progress bar; `report` receives {"scored_now": images this rank computed}.
    `conditions`: each row of `images`' condition (labels or captions) for a conditional model.
    Returns the scores on rank 0 and None on the other ranks.
    """
    ctx = ctx or Context()
    indices = np.asarray(indices, dtype=np.int64)
    ids = indices if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    if ids.shape != indices.shape:
        raise InputError(f"sample_ids has shape {ids.shape} but indices has {indices.shape}; give one identity per index")
    chunk_size = int(chunk_size or default_chunk_size(scorer.batch_size))
    store = None
    if work_dir is not None:
        store = ChunkStore(work_dir, identity, len(indices), chunk_size)
        if ctx.is_main:
            if overwrite:
                store.remove()
            store.open()
        barrier(ctx)
        if not ctx.is_main:
            store.open()
    bounds = chunk_bounds(len(indices), chunk_size)
    mine = [i for i in range(len(bounds)) if i % ctx.world_size == ctx.rank]
    results: dict[int, np.ndarray] = {}
    todo = []
    for i in mine:
        cached = store.load_chunk(i) if store is not None else None
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    if todo:
        scorer.check_images(images)
    if results and ctx.is_main and log is not None:
        left = sum(bounds[i][1] - bounds[i][0] for i in todo)
        log(f"resuming: {len(results)} of {len(mine)} chunks already scored in {store.folder}; "
            f"{left} images left to score")
    total = sum(bounds[i][1] - bounds[i][0] for i in todo)
    if report is not None:
        report["scored_now"] = total
    if label is None:
        label = (f"scoring {total} of {len(indices)} images ({scorer.config.method}"
                 + (f", rank 0 of {ctx.world_size}" if ctx.active else "") + ")")
    with progress_bar(progress and ctx.is_main, total, label) as ticker:
        for i in todo:
            start, end = bounds[i]
            values = np.empty(end - start, dtype=np.float64)
            rows = indices[start:end]
            for at, batch_values in scorer.iter_scores(images[rows], indices=ids[start:end], validated=True,
                                                       conditions=take(conditions, rows)):
                values[at:at + len(batch_values)] = batch_values
                ticker.update(len(batch_values))
            if store is not None:
                store.write_chunk(i, values)
            results[i] = values
    gathered = gather_to_main(results, ctx)
    if not ctx.is_main:
        return None
    out = np.empty(len(indices), dtype=np.float64)
    for part in gathered:
        for i, values in part.items():
            start, end = bounds[i]
            out[start:end] = values
    return out


__all__ = ["ChunkStore", "score_indices", "score_identity", "fingerprint_array", "fingerprint_model",
           "default_chunk_size"]
