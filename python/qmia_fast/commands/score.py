"""`qmia-fast score`: membership scores of a data set under a target model, resumable and torchrun-shardable."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from .. import atomic_io, distributed
from ..errors import ConfigError
from .common import (
    check_seed, config_option, data_options, load_data_from_options, load_model_from_options, model_options,
    resolve_score_options, scoring_options,
)

SUBSETS = ("all", "members", "public", "holdout", "nonmembers")
OUTPUT_SUFFIXES = (".npy", ".npz", ".csv")


@click.command("score")
@config_option
@model_options
@data_options
@scoring_options
@click.option("--subset", default="all", show_default=True, type=click.Choice(list(SUBSETS)),
              help="Which images to score (members/public/holdout need --split or --members).")
@click.option("--out", "out_path", required=True,
              help="Output file: .npy (float64 scores), .npz (scores, indices, config) or .csv (index,score).")
@click.option("--work-dir", default=None,
              help="Folder for resumable score chunks [default: OUT.chunks beside the output].")
@click.option("--keep-chunks", is_flag=True, default=False, help="Keep the chunk folder after success.")
@click.option("--chunk-size", default=None, type=click.IntRange(min=1),
              help="Images per resumable chunk (a multiple of the batch size) [default: about 1024].")
@click.option("--overwrite", is_flag=True, default=False,
              help="Discard partial chunks of a different run instead of refusing.")
def score(config, model, model_format, model_config, trust_checkpoint, data, data_format, layout, part, split_path,
          members, public_fraction, method, t_sec, k, t, p, n_draws, seed, batch_size, device, precision, progress,
          subset, out_path, work_dir, keep_chunks, chunk_size, overwrite):
    """Score images with the target model (lower score = more likely a training member).

    Killed runs resume: rerun the same command and only missing chunks are computed.
    Under `torchrun --nproc-per-node N -m qmia_fast score ...` each rank scores its
    share and rank 0 writes the result, bit-identical to a one-process run.
    """
    out = Path(out_path)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out {out_path}: use a .npy, .npz or .csv file name")
    check_seed(seed)
    device_type = "cuda" if device.startswith("cuda") or (device == "auto" and _cuda()) else "cpu"
    ctx = distributed.init(device_type)
    device = distributed.device_for_rank(device, ctx)
    try:
        run_score(model, model_format, model_config, trust_checkpoint, data, data_format, layout, part, split_path,
                  members, public_fraction, method, t_sec, k, t, p, n_draws, seed, batch_size, device, precision,
                  progress, subset, out, work_dir, keep_chunks, chunk_size, overwrite, ctx)
    finally:
        distributed.shutdown()


def run_score(model, model_format, model_config, trust_checkpoint, data, data_format, layout, part, split_path,
              members, public_fraction, method, t_sec, k, t, p, n_draws, seed, batch_size, device, precision,
              progress, subset, out, work_dir, keep_chunks, chunk_size, overwrite, ctx):
    from ..resumable import fingerprint_array, fingerprint_model, score_indices
    from ..scoring import Scorer

    loaded = load_data_from_options(data, data_format, layout, part, split_path, members, public_fraction, seed)
    images, split = loaded
    indices = select_indices(subset, split, len(images))
    target = load_model_from_options(model, model_format, model_config, trust_checkpoint)
    settings, note = resolve_score_options(target, dict(method=method, t_sec=t_sec, k=k, t=t, p=p, n_draws=n_draws))
    scorer = Scorer(target, settings["method"], t_sec=settings["t_sec"], k=settings["k"], t=settings["t"],
                    p=settings["p"], n_draws=settings["n_draws"], seed=seed, batch_size=batch_size, device=device,
                    precision=precision)
    scorer.check_images(images)
    if ctx.is_main:
        click.echo(f"data: {loaded.description}", err=True)
        if note:
            click.echo(note, err=True)
        click.echo(f"scoring {len(indices)} images with {scorer.config.method} on {scorer.device} ({scorer.config.precision}, "
                   f"batch {scorer.batch_size}, {scorer.config.unet_calls} UNet calls per image"
                   + (f", {ctx.world_size} ranks" if ctx.active else "") + ")", err=True)
    identity = {
        "score": scorer.config.to_dict(),
        "batch_size": scorer.batch_size,
        "device_type": scorer.device.type,
        "model": fingerprint_model(target),
        "data": fingerprint_array(images),
        "indices": fingerprint_array(indices),
    }
    chunks = Path(work_dir) if work_dir else out.with_name(out.name + ".chunks")
    started = time.perf_counter()
    values = score_indices(scorer, images, indices, work_dir=chunks, identity=identity, ctx=ctx,
                           progress=progress, overwrite=overwrite, chunk_size=chunk_size)
    elapsed = time.perf_counter() - started
    if not ctx.is_main:
        return
    write_scores(out, values, indices, {**identity, "elapsed_s": elapsed})
    if not keep_chunks:
        import shutil

        shutil.rmtree(chunks, ignore_errors=True)
    rate = len(indices) / elapsed if elapsed > 0 else float("inf")
    click.echo(f"wrote {len(values)} scores to {out} ({elapsed:.1f} s, {rate:.1f} images/s)")


def select_indices(subset: str, split, n: int) -> np.ndarray:
    if subset == "all":
        return np.arange(n, dtype=np.int64)
    if split is None:
        raise ConfigError(f"--subset {subset} needs a split: pass --split FILE or --members FILE")
    if subset == "nonmembers":
        return np.sort(np.concatenate([split.public, split.holdout])).astype(np.int64)
    return np.asarray(getattr(split, subset), dtype=np.int64)


def write_scores(out: Path, values: np.ndarray, indices: np.ndarray, meta: dict) -> None:
    suffix = out.suffix.lower()
    if suffix == ".npy":
        atomic_io.save_npy(out, values)
    elif suffix == ".npz":
        atomic_io.save_npz(out, scores=values, indices=indices, config=np.array(json.dumps(meta, default=str)))
    else:
        lines = ["index,score"] + [f"{int(i)},{v!r}" for i, v in zip(indices, values.tolist())]
        atomic_io.write_text(out, "\n".join(lines) + "\n")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
