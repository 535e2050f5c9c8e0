"""run_score: score one subset of a data set (resumable, shardable) and write the scores with their direction and settings."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import atomic_io, distributed
from ..errors import ConfigError
from ..results.interop import image_file_names
from ..results.score_files import SUFFIXES, score_metadata, sidecar_path, write_scores
from ..runtime import device_type
from .identity import digest_json, execution_identity, fingerprint_array, identity_key, model_identity, \
    score_identity
from .loading import load_for_scoring
from .outputs import check_output_file, spec_inputs
from .ownership import OwnedFolder, check_apart
from .resumable import CHUNK_FILES, MANIFEST, ChunkStore, discard_chunks, score_indices
from .specs import ScoreJob

Log = Callable[[str], None]


@dataclass
class ScoreResult:
    """What run_score produced: the scores (lower = member), their image indices, the file, and how long it took."""

    scores: np.ndarray
    indices: np.ndarray
    out: Path
    seconds: float
    metadata: dict


def select_indices(subset: str, split, n: int) -> np.ndarray:
    """The image indices of a subset: all images, or a set of the split."""
    if subset == "all":
        return np.arange(n, dtype=np.int64)
    if split is None:
        raise ConfigError(f"--subset {subset} needs a split: pass --split FILE or --members FILE")
    if subset == "nonmembers":
        return np.sort(np.concatenate([split.public, split.holdout])).astype(np.int64)
    return np.asarray(getattr(split, subset), dtype=np.int64)


def chunk_folder(job: ScoreJob) -> tuple[Path, str]:
    """Where the job's chunks go (--work-dir, or OUT.chunks beside the output) and how messages name it."""
    out = Path(job.out)
    if job.work_dir:
        return Path(job.work_dir), "--work-dir"
    return out.with_name(out.name + ".chunks"), f"the chunk folder beside --out {out}:"


def check_score_outputs(job: ScoreJob) -> None:
    """Before any work: the score file (and its sidecar) may be written, the chunk folder taken, no input touched."""
    out = Path(job.out)
    check_output_file(out, SUFFIXES, overwrite=job.overwrite)
    outputs = [(out, "--out")]
    if out.suffix.lower() == ".csv":
        check_output_file(sidecar_path(out), (".json",), overwrite=job.overwrite)
        outputs.append((sidecar_path(out), "--out"))
    chunks, option = chunk_folder(job)
    ChunkStore(chunks, {}, 0, 1, option=option).check()
    outputs.append((chunks, option))
    check_apart(outputs, spec_inputs(job.model, job.data, job.config_file))


def run_score(job: ScoreJob, log: Log | None = None) -> ScoreResult | None:
    """Score job.subset of job.data with job.model and write job.out; None on torchrun ranks other than 0.

    A killed run resumes from its chunks (job.work_dir, default OUT.chunks beside the output)
    when run again with the same job; under torchrun each rank scores its share. An existing
    job.out is replaced only with job.overwrite.
    """
    if not isinstance(job, ScoreJob):
        raise ConfigError(f"run_score takes a ScoreJob, got {type(job).__name__}; build one with qmia_fast.ScoreJob(...)")
    log = log or (lambda text: None)
    check_score_outputs(job)
    ctx = distributed.init(device_type(job.score.device))
    try:
        with distributed.reporting_failures(ctx):
            return _run(job, Path(job.out), ctx, log)
    finally:
        distributed.shutdown()


def _run(job: ScoreJob, out: Path, ctx, log: Log) -> ScoreResult | None:
    say = log if ctx.is_main else (lambda text: None)
    chunks, option = chunk_folder(job)
    run = load_for_scoring(job.model, job.data, job.score, job.seed, ctx, say)
    target, loaded, scorer = run.target, run.data, run.scorer
    indices = select_indices(job.subset, loaded.split, len(loaded.images))
    run.announce(say)
    say(f"scoring {len(indices)} images with {run.describe_scorer()}" + (f", {ctx.world_size} ranks" if ctx.active else ""))
    model_id = model_identity(target)  # each weight hashed once, for the identity and the metadata alike
    identity = score_identity(scorer, target, loaded.images, indices, run.conditions, model_id=model_id,
                              data=fingerprint_array(loaded.images))
    # Rank 0 holds the chunk folder's lock from before scoring until the score file is written.
    guard = OwnedFolder(chunks, option, "score-chunks", CHUNK_FILES, legacy=MANIFEST)
    if ctx.is_main:
        guard.claim()
    try:
        started = time.perf_counter()
        values = score_indices(scorer, loaded.images, indices, work_dir=chunks, identity=identity, ctx=ctx,
                               progress=job.progress, overwrite=job.overwrite, chunk_size=job.chunk_size, log=say,
                               option=option, conditions=run.conditions)
        seconds = time.perf_counter() - started
        if not ctx.is_main:
            return None
        metadata = score_metadata("lower_is_member", score=scorer.config.applicable(), plan=scorer.plan.to_dict(),
                                  condition=scorer.conditions.describe(), execution=execution_identity(scorer),
                                  model=job.model.path, model_sha256=digest_json(model_id),
                                  identity_sha256=identity_key(identity), data=loaded.description,
                                  subset=job.subset, seconds=seconds,
                                  recomputed_fp32_micro_batches=scorer.recomputed_fp32)
        # An image folder names one file per image (relative to --data); an array file is one file for all.
        files = image_file_names(loaded, indices, job.data.path)
        labels = None
        if loaded.split is not None:
            labels = np.isin(indices, loaded.split.members).astype(np.int8)
        atomic_io.remove_stale_temporaries(out)
        write_scores(out, values, indices, metadata, files=files, labels=labels)
        if not job.keep_chunks:
            discard_chunks(chunks)
        return ScoreResult(values, indices, out, seconds, metadata)
    finally:
        guard.release()

