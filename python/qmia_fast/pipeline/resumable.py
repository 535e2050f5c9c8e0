"""Resumable, shardable scoring: chunks bound to their run's identity and position, beside a manifest, so a killed run redoes only missing chunks."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic_io, distributed
from ..distributed import Context
from ..errors import DataError, InputError, ResumeMismatchError
from ..progress import progress_bar
from ..safe_read import parse_json, read_bytes
from ..scoring.conditions import take
from .identity import (  # noqa: F401 - re-exported: fingerprints used to live here
    fingerprint_array, fingerprint_model, identity_differences, identity_key, part_digests, score_identity,
)
from .ownership import OwnedFolder

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
CHUNK_FILES = (r"chunk_\d{6}\.npy", r"chunk_\d{6}\.npy\.sha256", r"latents_\d{6}\.npy", r"latents_\d{6}\.npy\.sha256",
               r"manifest\.json")
_MANIFEST_LIMIT = 1 << 20
_NPY_HEADER_SLACK = 4096


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + chunk_size)) for start in range(0, n, chunk_size)]


class ChunkStore:
    """A folder of score chunks for one run identity (config, execution, machine, model, data, indices).

    The manifest records the identity; a folder made for anything else is refused, never mixed
    (or, with overwrite, its chunks are discarded). Each chunk is an .npy written atomically,
    its hash beside it (chunk_i.npy.sha256) written first; the hash covers the run's key, the
    chunk's position and its bytes, so a chunk copied from another run or slot, altered,
    torn or without a hash is computed again. Only regular files of bounded size are read.
    """

    def __init__(self, folder: str | Path, identity: dict[str, Any], n: int, chunk_size: int,
                 option: str = "--work-dir"):
        self.folder = Path(folder)
        self.identity = identity
        self.n = int(n)
        self.chunk_size = int(chunk_size)
        self.bounds = chunk_bounds(self.n, self.chunk_size)
        self.key = identity_key({"identity": identity, "n": self.n, "chunk_size": self.chunk_size})
        self.owner = OwnedFolder(self.folder, option, "score-chunks", CHUNK_FILES, legacy=MANIFEST)

    def check(self) -> None:
        """Before work: the folder is new, empty or a chunk folder of qmia-fast's (not a file, a link, a user's folder)."""
        self.owner.check()

    def read_manifest(self) -> dict | None:
        path = self.folder / MANIFEST
        if not path.exists() and not path.is_symlink():
            return None
        try:
            manifest = parse_json(read_bytes(path, _MANIFEST_LIMIT, "chunk manifest", ResumeMismatchError),
                                  f"chunk manifest {path}", ResumeMismatchError)
        except ResumeMismatchError as exc:
            raise ResumeMismatchError(f"{path} is unreadable ({exc}); pass --overwrite to discard the chunks in {self.folder}, or choose "
                                      "another output") from None
        if not isinstance(manifest, dict):
            raise ResumeMismatchError(f"{path} is not a chunk manifest; pass --overwrite to discard the chunks in "
                                      f"{self.folder}, or choose another output")
        return manifest

    def open(self, overwrite: bool = False, main: bool = True) -> "ChunkStore":
        """Take the folder (rank 0: create, mark, lock) and check its manifest against this run.

        Chunks of the same run are kept, with or without overwrite: they hold the same bits.
        Chunks of another run are refused, or with overwrite discarded (only the chunk files).
        """
        if main:
            self.owner.claim()
            self.owner.remove_temporaries()  # what a kill -9 mid-write left behind
        try:
            existing = self.read_manifest()
        except ResumeMismatchError:
            if not (main and overwrite):
                raise
            existing = {}
        if existing is not None and existing.get("key") != self.key:
            if not (main and overwrite):
                differs = identity_differences(existing.get("identity", {}), self.identity)
                for name in ("n", "chunk_size"):
                    if existing.get(name) != getattr(self, name):
                        differs.append(name)
                raise ResumeMismatchError(
                    f"{self.folder} holds partial scores of a different run (differs in: "
                    f"{', '.join(differs) or 'its format'}); use a fresh --out, or pass --overwrite to discard them")
            self.owner.remove_own_files()
            existing = None
        if existing is None and main:
            atomic_io.write_json(self.folder / MANIFEST, {
                "format": "qmia-fast-scores", "version": FORMAT_VERSION, "key": self.key, "n": self.n,
                "chunk_size": self.chunk_size, "identity": self.identity})
        return self

    def chunk_path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npy"

    def hash_path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npy.sha256"

    def _seal(self, i: int, data: bytes, kind: str = "chunk") -> str:
        start, end = self.bounds[i]
        digest = hashlib.sha256(f"qmia-fast-{kind}|{self.key}|{i}|{start}|{end}|".encode())
        digest.update(data)
        return digest.hexdigest()

    def load_chunk(self, i: int) -> np.ndarray | None:
        return self._load_sealed(i, self.chunk_path(i), self.hash_path(i), "chunk", "score chunk", (), np.float64)

    def write_chunk(self, i: int, values: np.ndarray) -> None:
        self._write_sealed(i, self.chunk_path(i), self.hash_path(i), "chunk", values, np.float64)

    # A latent model's chunks keep their images' latents beside their scores (the VAE posterior mean times its
    # scaling factor), sealed like the scores: a resumed run encodes only the images of chunks it has not yet
    # encoded, and memory holds one chunk's latents at a time.

    def latents_path(self, i: int) -> Path:
        return self.folder / f"latents_{i:06d}.npy"

    def load_latents(self, i: int, shape: tuple[int, ...]) -> np.ndarray | None:
        return self._load_sealed(i, self.latents_path(i), self._latents_hash_path(i), "latents", "latent chunk",
                                 shape, np.float32)

    def write_latents(self, i: int, latents: np.ndarray) -> None:
        self._write_sealed(i, self.latents_path(i), self._latents_hash_path(i), "latents", latents, np.float32)

    def _latents_hash_path(self, i: int) -> Path:
        return self.folder / f"latents_{i:06d}.npy.sha256"

    def _load_sealed(self, i: int, path: Path, recorded: Path, kind: str, what: str, item_shape: tuple[int, ...],
                     dtype) -> np.ndarray | None:
        """Chunk i's array (`item_shape` per image, `dtype`) from `path` if `recorded` holds its seal, else None."""
        if not path.exists() or not recorded.exists():
            return None
        start, end = self.bounds[i]
        shape = (end - start, *item_shape)
        try:
            data = read_bytes(path, np.dtype(dtype).itemsize * int(np.prod(shape)) + _NPY_HEADER_SLACK, what)
            expected = read_bytes(recorded, 256, f"{what} hash").decode("ascii", "replace").strip()
            if self._seal(i, data, kind) != expected:
                return None  # altered, torn, or another run's or slot's: recompute it
            values = np.load(io.BytesIO(data), allow_pickle=False)
        except (DataError, OSError, ValueError):
            return None  # unreadable, not a regular file, too big: recompute it
        if values.shape != shape or values.dtype != dtype:
            return None
        return values

    def _write_sealed(self, i: int, path: Path, recorded: Path, kind: str, array: np.ndarray, dtype) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, dtype=dtype))
        data = buffer.getvalue()
        # The hash first: a chunk file that is visible is a finished chunk (a kill between the two
        # writes leaves a hash without its chunk, which is recomputed).
        atomic_io.write_text(recorded, self._seal(i, data, kind) + "\n")
        atomic_io.write_bytes(path, data)

    def remove(self) -> None:
        """Delete the chunk files, the manifest and the marker; the folder too if qmia-fast made it and it is empty."""
        self.owner.remove()

    def release(self) -> None:
        self.owner.release()


def discard_chunks(folder: str | Path) -> None:
    """Remove a chunk folder's own files (and the folder if qmia-fast made it); anything else in it stays."""
    OwnedFolder(folder, "--work-dir", "score-chunks", CHUNK_FILES, legacy=MANIFEST).remove()


def default_chunk_size(batch_size: int) -> int:
    """Chunks of whole scoring steps, about 1024 images."""
    return batch_size * max(1, 1024 // batch_size)


def score_indices(scorer, images, indices, *, work_dir: str | Path | None, identity: dict[str, Any],
                  ctx: Context | None = None, chunk_size: int | None = None, progress: bool = False,
                  overwrite: bool = False, log=None, sample_ids=None, label: str | None = None,
                  report: dict[str, Any] | None = None, option: str = "--work-dir",
                  conditions=None) -> np.ndarray | None:
    """Scores (float64, in the order of `indices`) of images[indices], chunked, resumable and sharded.

    Chunk i covers positions [i*chunk_size, (i+1)*chunk_size) of `indices`; rank r of W
    computes the chunks with i % W == r. Every image is scored under its global index
    (`sample_ids[i]` instead of `indices[i]` where given, e.g. altered copies keep their
    originals' noise), so the bits do not depend on the chunking or the ranks. Under torchrun
    the ranks first agree on `identity` (a difference is refused on every rank). With
    work_dir, finished chunks are saved and reused on the next run; the caller removes
    work_dir (discard_chunks) once the final output is safely written. Images are validated
    before any UNet call. `label` names the progress bar; `report` receives {"scored_now":
    images this rank computed}. `conditions`: each row of `images`' condition (labels or captions)
    for a conditional model. Returns the scores on rank 0 and None on the other ranks.
    """
    ctx = ctx or Context()
    indices = np.asarray(indices, dtype=np.int64)
    ids = indices if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
    if ids.shape != indices.shape:
        raise InputError(f"sample_ids has shape {ids.shape} but indices has {indices.shape}; give one identity per index")
    chunk_size = int(chunk_size or default_chunk_size(scorer.batch_size))
    distributed.agree(ctx, {**part_digests(identity), "n": str(len(indices)), "chunk_size": str(chunk_size),
                            "sample_ids": fingerprint_array(ids)})
    store = None
    if work_dir is not None:
        store = ChunkStore(work_dir, identity, len(indices), chunk_size, option)
        if ctx.is_main:
            store.open(overwrite=overwrite)
        distributed.wait_all(ctx, "chunk-store")
        if not ctx.is_main:
            store.open(main=False)
    try:
        return _score(scorer, images, indices, ids, store, ctx, chunk_size, progress, log, label, report, conditions)
    finally:
        if store is not None:
            store.release()


def _score(scorer, images, indices, ids, store, ctx, chunk_size, progress, log, label, report, conditions):
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
            inputs, kind = _chunk_inputs(scorer, images, rows, store, i)
            for at, batch_values in scorer.iter_scores(inputs, indices=ids[start:end], validated=True,
                                                       conditions=take(conditions, rows), inputs=kind):
                values[at:at + len(batch_values)] = batch_values
                ticker.update(len(batch_values))
            if store is not None:
                store.write_chunk(i, values)
            results[i] = values
    distributed.wait_all(ctx, "scored")
    gathered = distributed.gather_chunks(ctx, results, bounds)
    if gathered is None:
        return None
    out = np.empty(len(indices), dtype=np.float64)
    for i, values in gathered.items():
        start, end = bounds[i]
        out[start:end] = values
    return out


def _chunk_inputs(scorer, images, rows, store, i: int):
    """(what to score, "pixels" or "latents") for one chunk: a latent model's latents, encoded once and kept with the
    chunk when there is a chunk folder; the pixels themselves otherwise."""
    if getattr(scorer.model, "latent", None) is None or store is None:
        return images[rows], "pixels"
    latents = store.load_latents(i, tuple(scorer.model.input_shape))
    if latents is None:
        latents = scorer.encode(images[rows])
        store.write_latents(i, latents)
    return latents, "latents"


__all__ = ["ChunkStore", "score_indices", "score_identity", "fingerprint_array", "fingerprint_model",
           "default_chunk_size", "discard_chunks", "chunk_bounds"]
