"""run_score: score one subset of a data set (resumable, shardable) and write the scores with their direction and settings."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import distributed
from ..errors import ConfigError
from ..results.interop import image_file_names
from ..runtime import device_type
from ..results.score_files import SUFFIXES, score_metadata, write_scores
from .loading import load_for_scoring
from .outputs import check_output_file
from .resumable import fingerprint_model, score_identity, score_indices
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


def run_score(job: ScoreJob, log: Log | None = None) -> ScoreResult | None:
    """Score job.subset of job.data with job.model and write job.out; None on torchrun ranks other than 0.

    A killed run resumes from its chunks (job.work_dir, default OUT.chunks beside the output)
    when run again with the same job; under torchrun each rank scores its share.
    """
    log = log or (lambda text: None)
    out = Path(job.out)
    check_output_file(out, SUFFIXES)
    ctx = distributed.init(device_type(job.score.device))
    try:
        return _run(job, out, ctx, log)
    finally:
        distributed.shutdown()


def _run(job: ScoreJob, out: Path, ctx, log: Log) -> ScoreResult | None:
    say = log if ctx.is_main else (lambda text: None)
    run = load_for_scoring(job.model, job.data, job.score, job.seed, ctx, say)
    target, loaded, scorer = run.target, run.data, run.scorer
    indices = select_indices(job.subset, loaded.split, len(loaded.images))
    run.announce(say)
    say(f"scoring {len(indices)} images with {run.describe_scorer()}" + (f", {ctx.world_size} ranks" if ctx.active else ""))
    identity = score_identity(scorer, target, loaded.images, indices, run.conditions)
    chunks = Path(job.work_dir) if job.work_dir else out.with_name(out.name + ".chunks")
    started = time.perf_counter()
    values = score_indices(scorer, loaded.images, indices, work_dir=chunks, identity=identity, ctx=ctx,
                           progress=job.progress, overwrite=job.overwrite, chunk_size=job.chunk_size, log=say,
                           conditions=run.conditions)
    seconds = time.perf_counter() - started
    if not ctx.is_main:
        return None
    metadata = score_metadata("lower_is_member", score=scorer.config.applicable(), unet_batch=scorer.unet_batch,
                              device=str(scorer.device), model=job.model.path, model_sha256=fingerprint_model(target),
                              data=loaded.description, subset=job.subset, seconds=seconds,
                              recomputed_fp32_micro_batches=scorer.recomputed_fp32)
    # An image folder names one file per image; an array file is one file for all.
    files = image_file_names(loaded, indices)
    labels = None
    if loaded.split is not None:
        labels = np.isin(indices, loaded.split.members).astype(np.int8)
    write_scores(out, values, indices, metadata, files=files, labels=labels)
    if not job.keep_chunks:
        shutil.rmtree(chunks, ignore_errors=True)
    return ScoreResult(values, indices, out, seconds, metadata)
