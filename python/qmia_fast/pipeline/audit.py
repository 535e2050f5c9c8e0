"""run_audit: load, score members/public/holdout (resumable, shardable), fit the bag, vote, and write one whole report."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import distributed
from ..errors import ConfigError, DataError
from ..runtime import device_type
from ..seeds import derive_seed
from .identity import identity_key, score_identity
from .loading import load_for_scoring
from .outputs import AuditFolder, spec_inputs
from .resumable import score_indices
from .specs import AttackSpec, AuditSpec

SETS = ("members", "public", "holdout")
Log = Callable[[str], None]
# derive_seed stream of --max-per-set's subsamples (one sub-stream per set name).
_SUBSAMPLE_STREAM = 7


@dataclass
class Prepared:
    """Everything loaded and resolved for an audit, before any image is scored."""

    spec: AuditSpec
    target: Any
    loaded: Any                      # data.LoadedData: images, split, description, files
    sets: dict[str, np.ndarray]      # members / public / holdout -> image indices
    settings: dict[str, Any]         # resolved score settings
    note: str | None                 # where settings came from, when not from the user
    scorer: Any
    ctx: distributed.Context
    conditions: Any = None           # each image's condition (labels or captions), or None
    identity_sha256: str | None = None  # the run's identity key, once score_sets has computed it

    @property
    def plan(self):
        return self.scorer.plan

    @property
    def images(self) -> np.ndarray:
        return self.loaded.images

    @property
    def union(self) -> np.ndarray:
        return np.unique(np.concatenate([self.sets[name] for name in SETS]))


@dataclass
class AuditResult:
    """What run_audit produced: the report, the printed table, the fitted attack and the arrays behind them."""

    report: dict
    table: str
    attack: Any
    result: Any                      # attack.AttackResult on the evaluation images
    labels: np.ndarray               # 1 = member, for the evaluation images (members then holdout)
    indices: np.ndarray              # their image indices
    raw_scores: dict[str, np.ndarray]  # set name -> raw scores, in the order of sets[name]
    sets: dict[str, np.ndarray]
    out: Path | None = None
    files: list[Path] = field(default_factory=list)
    note: str | None = None


def prepare(spec: AuditSpec, ctx: distributed.Context | None = None, log: Log | None = None) -> Prepared:
    """Load the model and data, resolve the score settings, the run plan and the sets; check images before any
    UNet call."""
    log = log or (lambda text: None)
    ctx = ctx or distributed.Context()
    run = load_for_scoring(spec.model, spec.data, spec.score, spec.seed, ctx, log)
    target, loaded, settings, note, scorer = run.target, run.data, run.settings, run.note, run.scorer
    split = loaded.split
    if split is None:
        raise ConfigError("the audit needs to know the members: pass --split FILE (SecMI/PIA or ours) "
                          "or --members FILE (the rest become public and holdout non-members)")
    sets = {"members": split.members, "public": split.public, "holdout": split.holdout}
    if spec.attack.max_per_set:
        sets = {name: subsample(idx, spec.attack.max_per_set, spec.seed, name) for name, idx in sets.items()}
    for name, idx in sets.items():
        if len(idx) < 10:
            raise DataError(f"the {name} set has {len(idx)} images; the attack needs at least 10 in each set")
    run.announce(log)
    log(f"target: {target.format} model, image {'x'.join(map(str, target.image_shape))}, T = {target.schedule.T}; "
        f"score {run.describe_scorer()}")
    log(f"sets: {len(sets['members'])} members, {len(sets['public'])} public, {len(sets['holdout'])} holdout")
    return Prepared(spec, target, loaded, sets, settings, note, scorer, ctx, run.conditions)


def score_sets(prepared: Prepared, work_dir: Path | None, *, overwrite: bool = False, progress: bool = False,
               chunk_size: int | None = None, log: Log | None = None) -> dict[str, np.ndarray] | None:
    """Raw scores of every set (one resumable, shardable pass over their union); None on ranks other than 0."""
    union = prepared.union
    identity = score_identity(prepared.scorer, prepared.target, prepared.images, union, prepared.conditions)
    prepared.identity_sha256 = identity_key(identity)
    raw = score_indices(prepared.scorer, prepared.images, union, work_dir=work_dir, identity=identity,
                        ctx=prepared.ctx, progress=progress, overwrite=overwrite, chunk_size=chunk_size, log=log,
                        option=f"--out {work_dir.parent}: its {work_dir.name}" if work_dir is not None else "--out",
                        conditions=prepared.conditions)
    if raw is None:
        return None
    position = np.searchsorted(union, np.concatenate([prepared.sets[name] for name in SETS]))
    out, at = {}, 0
    for name in SETS:
        n = len(prepared.sets[name])
        out[name] = raw[position[at:at + n]]
        at += n
    return out


def fit_and_predict(images: np.ndarray, sets: dict[str, np.ndarray], raw: dict[str, np.ndarray],
                    attack_spec: AttackSpec, seed: int, device: str = "cpu", progress: bool = False,
                    threads: int | None = None):
    """Fit the bag (and baselines) on the public set; predict members + holdout. Returns (attack, result, labels, indices).

    device, threads: where and on how many torch threads the regressors train (the run plan's fit_device, fit_threads).
    """
    from ..attack import QuantileAttack

    attack = QuantileAttack(alpha=attack_spec.alpha, n_models=attack_spec.n_models, seed=seed, progress=progress,
                            device=device, threads=threads, **attack_spec.attack_options())
    attack.fit(images[sets["public"]], raw["public"])
    indices = np.concatenate([sets["members"], sets["holdout"]])
    labels = np.concatenate([np.ones(len(sets["members"]), np.int8), np.zeros(len(sets["holdout"]), np.int8)])
    result = attack.predict(images[indices], np.concatenate([raw["members"], raw["holdout"]]))
    return attack, result, labels, indices


def run_audit(spec: AuditSpec, log: Log | None = None) -> AuditResult | None:
    """The whole audit, as `qmia-fast attack` runs it; returns None on torchrun ranks other than 0.

    Under torchrun every rank scores its share; rank 0 fits, reports and writes. With
    spec.out set, a killed run resumes its scoring when run again with the same spec.
    """
    if not isinstance(spec, AuditSpec):
        raise ConfigError(f"run_audit takes an AuditSpec, got {type(spec).__name__}; build one with "
                          "qmia_fast.AuditSpec(...)")
    log = log or (lambda text: None)
    folder = AuditFolder(spec.out, spec.overwrite) if spec.out is not None else None
    if folder is not None:
        folder.check(spec_inputs(spec.model, spec.data, spec.config_file))
    ctx = distributed.init(device_type(spec.score.device))
    try:
        with distributed.reporting_failures(ctx):
            return _run(spec, folder, ctx, log)
    finally:
        if folder is not None:
            folder.release()
        distributed.shutdown()


def _run(spec: AuditSpec, folder: AuditFolder | None, ctx, log: Log) -> AuditResult | None:
    from ..results.report import format_summary_table, report_from_attack, write_artifacts

    timings: dict[str, float] = {}
    started = time.perf_counter()
    say = log if ctx.is_main else (lambda text: None)
    prepared = prepare(spec, ctx, say)
    timings["load_s"] = time.perf_counter() - started
    from ..results.interop import image_file_names

    # Names (relative to --data, undecodable bytes escaped) before any work, so that no name can fail late.
    evaluated = np.concatenate([prepared.sets["members"], prepared.sets["holdout"]])
    names = image_file_names(prepared.loaded, evaluated, spec.data.path)
    if folder is not None and ctx.is_main:
        folder.claim()  # one run per folder: a second run into it is refused here, before scoring

    t0 = time.perf_counter()
    raw = score_sets(prepared, folder.chunks if folder else None, overwrite=spec.overwrite,
                     progress=spec.progress, chunk_size=spec.chunk_size, log=say)
    timings["score_s"] = time.perf_counter() - t0
    if raw is None:
        return None
    scorer = prepared.scorer
    t0 = time.perf_counter()
    attack, result, labels, indices = fit_and_predict(
        prepared.images, prepared.sets, raw, spec.attack, spec.seed, device=prepared.plan.fit_device,
        progress=spec.progress, threads=prepared.plan.fit_threads)
    timings["fit_predict_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started

    n_scored = len(prepared.union)
    # What was asked (the spec), and what it resolved to: the score as computed, the attack as fitted
    # (report_from_attack adds "attack").
    config = {"spec": spec.to_dict(),
              "score": {**scorer.config.applicable(), "condition": scorer.conditions.describe()},
              "plan": prepared.plan.to_dict(),
              "score_settings_note": prepared.note, "world_size": ctx.world_size,
              "identity_sha256": prepared.identity_sha256}
    report, arrays = report_from_attack(
        attack, result, labels, raw_scores=np.concatenate([raw["members"], raw["holdout"]]), indices=indices,
        config=config, timings=timings,
        extra={"model": prepared.target.config,
               "data": {"description": prepared.loaded.description, "split": prepared.loaded.split.summary()},
               "sets": {name: len(idx) for name, idx in prepared.sets.items()},
               "unet_calls_per_image": scorer.config.unet_calls,
               "scoring_images_per_s": n_scored / max(timings["score_s"], 1e-9),
               "recomputed_fp32_micro_batches": scorer.recomputed_fp32})
    arrays.update(public_indices=np.asarray(prepared.sets["public"], np.int64), public_raw_scores=raw["public"])
    # Images from a folder keep their file names (relative to it) in scores.npz and scores.csv.
    if names is not None:
        arrays["files"] = np.asarray(names, dtype=str)
    table = format_summary_table(report)
    for warning in report["warnings"]:
        say(f"warning: {warning}")
    files: list[Path] = []
    note = None
    if folder is not None:
        folder.begin()
        files, note = write_artifacts(folder.path, report, arrays, plots=spec.plots)
        attack.save(folder.path / "attack.pt")
        files.append(folder.path / "attack.pt")
        files.append(folder.finish(report, files, note))
    return AuditResult(report=report, table=table, attack=attack, result=result, labels=labels, indices=indices,
                       raw_scores=raw, sets=prepared.sets, out=folder.path if folder else None, files=files,
                       note=note)


def subsample(indices: np.ndarray, limit: int, seed: int, name: str) -> np.ndarray:
    """At most `limit` of `indices`, drawn with a generator seeded by seeds.derive_seed(seed, stream, set name)."""
    if len(indices) <= limit:
        return np.asarray(indices, dtype=np.int64)
    name_stream = int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "little")
    rng = np.random.default_rng(derive_seed(seed, _SUBSAMPLE_STREAM, name_stream))
    return np.sort(rng.choice(np.asarray(indices, dtype=np.int64), size=limit, replace=False))
