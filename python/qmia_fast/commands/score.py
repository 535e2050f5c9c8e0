"""`qmia-fast score`: membership scores of a data set under a target model, resumable and torchrun-shardable."""
from __future__ import annotations

import click

from ..pipeline import SUBSETS, ScoreJob, run_score
from .common import (
    config_option, data_options, data_spec, echo_err, model_options, model_spec, resumable_options, score_spec,
    scoring_options,
)


@click.command("score")
@config_option
@model_options
@data_options
@scoring_options
@click.option("--subset", default="all", show_default=True, type=click.Choice(list(SUBSETS)),
              help="Which images to score (members/public/holdout need --split or --members).")
@click.option("--out", "out_path", required=True,
              help="Output file: .npz (scores, indices, labels, metadata), .csv (index,score[,label][,file], its "
                   "metadata in OUT.json beside it) or .npy (bare float64 scores).")
@click.option("--work-dir", default=None,
              help="Folder for resumable score chunks: new, empty, or one qmia-fast made [default: OUT.chunks "
                   "beside the output]. Only the chunks are deleted after success, and the folder only if qmia-fast "
                   "made it.")
@click.option("--keep-chunks", is_flag=True, default=False, help="Keep the chunks after success.")
@resumable_options("Replace an existing --out, and discard partial chunks of a different run instead of refusing "
                   "(chunks of the same run are kept).")
def score(**options):
    """Score images with the target model (lower score = more likely a training member).

    Killed runs resume: rerun the same command and only missing chunks are computed.
    Under `torchrun --nproc-per-node N -m qmia_fast score ...` each rank scores its
    share and rank 0 writes the result, bit-identical to a one-process run.
    """
    job = ScoreJob(model=model_spec(options), data=data_spec(options), score=score_spec(options),
                   out=options.pop("out_path"), subset=options.pop("subset"), seed=options.pop("seed"),
                   work_dir=options.pop("work_dir"), keep_chunks=options.pop("keep_chunks"),
                   chunk_size=options.pop("chunk_size"), overwrite=options.pop("overwrite"),
                   progress=options.pop("progress"), config_file=options.pop("config"))
    result = run_score(job, log=echo_err)
    if result is not None:
        rate = len(result.scores) / result.seconds if result.seconds > 0 else float("inf")
        click.echo(f"wrote {len(result.scores)} scores to {result.out} ({result.seconds:.1f} s, {rate:.1f} images/s)")
