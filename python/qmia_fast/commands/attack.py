"""`qmia-fast attack`: the whole audit (score members, public and holdout; fit the bag; vote; report)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
import numpy as np

from .. import distributed
from ..errors import ConfigError, DataError
from ..regress import RegressorConfig
from .common import (
    check_seed, config_option, data_options, load_data_from_options, load_model_from_options, model_options,
    resolve_score_options, scoring_options,
)

DEFAULT_OUT = "qmia-out"


@click.command("attack")
@config_option
@model_options
@data_options
@scoring_options
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Target false-positive rate of the per-image quantile thresholds.")
@click.option("--n-models", default=7, show_default=True, type=click.IntRange(min=1),
              help="Regressors in the bag (member iff more than half vote member).")
@click.option("--reg-epochs", default=None, type=click.IntRange(min=1),
              help=f"Regressor training epochs (upper bound; early stopping) [default: {RegressorConfig.epochs}].")
@click.option("--reg-width", default=None, type=click.IntRange(min=1),
              help=f"Regressor width [default: {RegressorConfig.width}].")
@click.option("--reg-depth", default=None, type=click.IntRange(min=1, max=6),
              help=f"Regressor depth [default: {RegressorConfig.depth}].")
@click.option("--max-per-set", default=None, type=click.IntRange(min=10),
              help="Use at most this many images of each set (members, public, holdout), seeded; for quick looks.")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True,
              help="Output folder: report.json, scores.npz, roc.png, roc_log.png, attack.pt.")
@click.option("--chunk-size", default=None, type=click.IntRange(min=1),
              help="Images per resumable chunk (a multiple of the batch size) [default: about 1024].")
@click.option("--overwrite", is_flag=True, default=False,
              help="Discard partial scores left in --out by a run with other settings instead of refusing.")
def attack(config, model, model_format, model_config, trust_checkpoint, data, data_format, layout, part, split_path,
           members, public_fraction, method, t_sec, k, t, p, n_draws, seed, batch_size, device, precision, progress,
           alpha, n_models, reg_epochs, reg_width, reg_depth, max_per_set, out_dir, chunk_size, overwrite):
    """Run the membership audit end to end. With no options: the shipped demo on CPU.

    Scores the members, the public non-members and the holdout non-members with the target
    model; fits a bag of quantile regressors of log(score) on the public set; calls an
    image a member iff most of the bag put its log-score below their alpha-quantile; and
    reports the attack against the holdout, beside a single regressor and a marginal
    threshold. A killed run resumes its scoring when the same command is run again.
    """
    check_seed(seed)
    device_type = "cuda" if device.startswith("cuda") or (device == "auto" and _cuda()) else "cpu"
    ctx = distributed.init(device_type)
    options = dict(model=model, model_format=model_format, model_config=model_config, data=data,
                   data_format=data_format, layout=layout, part=part, split=split_path, members=members,
                   public_fraction=public_fraction, method=method, t_sec=t_sec, k=k, t=t, p=p, n_draws=n_draws,
                   seed=seed, batch_size=batch_size, device=device, precision=precision, alpha=alpha,
                   n_models=n_models, reg_epochs=reg_epochs, reg_width=reg_width, reg_depth=reg_depth,
                   max_per_set=max_per_set, out=out_dir, chunk_size=chunk_size,
                   config_file=config)
    try:
        run_attack(options, trust_checkpoint, progress, overwrite, ctx,
                   distributed.device_for_rank(device, ctx))
    finally:
        distributed.shutdown()


def run_attack(options: dict, trust_checkpoint: bool, progress: bool, overwrite: bool, ctx, device: str) -> None:
    from ..attack import QuantileAttack
    from ..report import build_report, format_summary_table, score_arrays, write_report
    from ..resumable import fingerprint_array, fingerprint_model, score_indices
    from ..scoring import Scorer

    timings: dict[str, float] = {}
    started = time.perf_counter()
    out = Path(options["out"])
    say = (lambda text: click.echo(text, err=True)) if ctx.is_main else (lambda text: None)

    loaded = load_data_from_options(options["data"], options["data_format"], options["layout"], options["part"],
                                    options["split"], options["members"], options["public_fraction"],
                                    options["seed"])
    images, split = loaded
    if split is None:
        raise ConfigError("attack needs to know the members: pass --split FILE (SecMI/PIA or ours) "
                          "or --members FILE (the rest become public and holdout non-members)")
    sets = {"members": split.members, "public": split.public, "holdout": split.holdout}
    if options["max_per_set"]:
        sets = {name: _subsample(idx, options["max_per_set"], options["seed"], name) for name, idx in sets.items()}
    for name, idx in sets.items():
        if len(idx) < 10:
            raise DataError(f"the {name} set has {len(idx)} images; the attack needs at least 10 in each set")
    target = load_model_from_options(options["model"], options["model_format"], options["model_config"],
                                     trust_checkpoint)
    settings, note = resolve_score_options(target, {name: options[name] for name in
                                                    ("method", "t_sec", "k", "t", "p", "n_draws")})
    options.update(settings)
    scorer = Scorer(target, options["method"], t_sec=options["t_sec"], k=options["k"], t=options["t"],
                    p=options["p"], n_draws=options["n_draws"], seed=options["seed"],
                    batch_size=options["batch_size"], device=device, precision=options["precision"])
    scorer.check_images(images)
    timings["load_s"] = time.perf_counter() - started
    say(f"data: {loaded.description}")
    if note:
        say(note)
    say(f"target: {target.format} model, image {'x'.join(map(str, target.image_shape))}, T = {target.schedule.T}; "
        f"score {options['method']} on {scorer.device} ({scorer.config.precision}, batch {scorer.batch_size}, "
        f"{scorer.config.unet_calls} UNet calls per image)")
    say(f"sets: {len(sets['members'])} members, {len(sets['public'])} public, {len(sets['holdout'])} holdout")

    # One scoring pass over the union, in index order (resumable, shardable), then split back.
    union = np.unique(np.concatenate(list(sets.values())))
    identity = {"score": scorer.config.to_dict(), "batch_size": scorer.batch_size,
                "device_type": scorer.device.type, "model": fingerprint_model(target),
                "data": fingerprint_array(images), "indices": fingerprint_array(union)}
    chunks = out / "scores.chunks"
    t0 = time.perf_counter()
    raw = score_indices(scorer, images, union, work_dir=chunks, identity=identity, ctx=ctx, progress=progress,
                        overwrite=overwrite, chunk_size=options["chunk_size"])
    timings["score_s"] = time.perf_counter() - t0
    if not ctx.is_main:
        return
    position = {int(i): n for n, i in enumerate(union)}
    raw_of = {name: raw[[position[int(i)] for i in idx]] for name, idx in sets.items()}

    attack_options = {}
    for key, name in (("reg_epochs", "epochs"), ("reg_width", "width"), ("reg_depth", "depth")):
        if options[key] is not None:
            attack_options[name] = options[key]
    reg_device = "cuda" if scorer.device.type == "cuda" else "cpu"
    quantile_attack = QuantileAttack(alpha=options["alpha"], n_models=options["n_models"], seed=options["seed"],
                                     progress=progress, device=reg_device, **attack_options)
    t0 = time.perf_counter()
    quantile_attack.fit(images[sets["public"]], raw_of["public"])
    timings["fit_s"] = time.perf_counter() - t0

    eval_idx = np.concatenate([sets["members"], sets["holdout"]])
    labels = np.concatenate([np.ones(len(sets["members"]), np.int8), np.zeros(len(sets["holdout"]), np.int8)])
    eval_raw = np.concatenate([raw_of["members"], raw_of["holdout"]])
    t0 = time.perf_counter()
    result = quantile_attack.predict(images[eval_idx], eval_raw)
    timings["predict_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started

    results = {name: (r.score, r.decision) for name, r in result.methods().items()}
    config = {**{key: value for key, value in options.items() if key != "config_file"},
              "config_file": options["config_file"], "precision_resolved": scorer.config.precision,
              "batch_size_resolved": scorer.batch_size, "device_resolved": str(scorer.device),
              "attack": quantile_attack.params(), "world_size": ctx.world_size,
              "score_settings_note": note}
    report = build_report(results, labels, config=config, seed=options["seed"], timings=timings,
                          alpha=options["alpha"],
                          extra={"model": target.config, "data": {"description": loaded.description,
                                                                    "split": split.summary()},
                                 "sets": {name: len(idx) for name, idx in sets.items()},
                                 "unet_calls_per_image": scorer.config.unet_calls,
                                 "scoring_images_per_s": len(union) / max(timings["score_s"], 1e-9),
                                 "fit": quantile_attack.fit_info})
    arrays = score_arrays(results, labels, raw_scores=eval_raw, indices=eval_idx, votes=result.votes)
    public_arrays = {"public_indices": np.asarray(sets["public"], np.int64), "public_raw_scores": raw_of["public"]}
    quantile_attack.save(out / "attack.pt")
    written = write_report(out, report, {**arrays, **public_arrays})
    shutil.rmtree(chunks, ignore_errors=True)
    if written["note"]:
        say(written["note"])
    click.echo(format_summary_table(report))
    names = [p.name for p in written["files"]] + ["attack.pt"]
    click.echo(f"\nwrote {', '.join(names)} to {out}/ in {timings['total_s']:.0f} s "
               f"(scoring {timings['score_s']:.0f} s, bag fit {timings['fit_s']:.0f} s)")


def _subsample(indices: np.ndarray, limit: int, seed: int, name: str) -> np.ndarray:
    if len(indices) <= limit:
        return np.asarray(indices, dtype=np.int64)
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    return np.sort(rng.choice(np.asarray(indices, dtype=np.int64), size=limit, replace=False))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
