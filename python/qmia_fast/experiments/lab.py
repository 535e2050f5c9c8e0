"""The shared runner of every experiment: loads the target and sets once, scores through the cache, fits and measures attacks."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import metrics
from ..attack import BAG, MARGINAL, SINGLE, QuantileAttack
from ..pipeline.audit import SETS, prepare, subsample
from ..pipeline.specs import AuditSpec
from ..progress import progress_bar
from ..regress.selection import SELECTION_RULE
from ..scoring.conditions import take
from ..runtime import resolve_device
from ..seeds import derive_seed
from .budget import Budget
from .cache import FitCache, Fingerprints, ScoreCache, array_digest

Log = Callable[[str], None]
METHOD_ORDER = (BAG, SINGLE, MARGINAL)
# derive_seed stream of the bag seeds: seed r of every experiment is the same, so settings are compared
# on the same regressor initialisations and resamples (paired), not on independent draws.
_BAG_SEED_STREAM = 13


class Lab:
    """One target, one data set and split, one output folder: what every experiment draws on.

    `spec` carries the user's model, data, score and attack options (out is ignored); the
    budget's max_per_set caps the sets on top of the user's --max-per-set.
    """

    def __init__(self, spec: AuditSpec, out: Path, budget: Budget, *, log: Log | None = None,
                 progress: bool = False):
        limit = _min_limit(spec.attack.max_per_set, budget.max_per_set)
        self.spec = replace(spec, out=None, attack=replace(spec.attack, max_per_set=limit))
        self.out = Path(out)
        self.budget = budget
        self.log = log or (lambda text: None)
        self.progress = progress
        self.fingerprints = Fingerprints()
        self.score_cache = ScoreCache(self.out / "cache", self.fingerprints, self.log)
        self.fit_cache = FitCache(self.out / "cache", self.log)
        self._prepared = None
        self._base_scores = None
        self._set_images = None

    # -- what was loaded -----------------------------------------------------------------

    @property
    def prepared(self):
        if self._prepared is None:
            self._prepared = prepare(self.spec, log=self.log)
        return self._prepared

    @property
    def images(self) -> np.ndarray:
        return self.prepared.images

    @property
    def target(self):
        return self.prepared.target

    @property
    def sets(self) -> dict[str, np.ndarray]:
        return self.prepared.sets

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved score settings (the user's, else the model folder's recommendation, else defaults)."""
        return dict(self.prepared.settings)

    @property
    def alpha(self) -> float:
        return self.spec.attack.alpha

    @property
    def n_models(self) -> int:
        return self.spec.attack.n_models

    @property
    def fit_device(self) -> str:
        return "cuda" if resolve_device(self.spec.score.device).type == "cuda" else "cpu"

    def regressor_options(self, width: int | None = None) -> dict[str, Any]:
        options = dict(self.spec.attack.regressor_options())
        if "epochs" not in options and self.budget.reg_epochs is not None:
            options["epochs"] = self.budget.reg_epochs
        if width is not None:
            options["width"] = width
        if self.spec.score.threads is not None:
            options["threads"] = self.spec.score.threads
        return options

    def seeds(self, n: int) -> list[int]:
        return [derive_seed(self.spec.seed, _BAG_SEED_STREAM, r) for r in range(n)]

    def smaller_sets(self, limit: int | None) -> dict[str, np.ndarray]:
        """The sets capped at `limit` images each (seeded as --max-per-set is), or the sets as they are."""
        if limit is None:
            return dict(self.sets)
        return {name: subsample(idx, limit, self.spec.seed, name) for name, idx in self.sets.items()}

    def describe(self) -> dict[str, Any]:
        p = self.prepared
        return {"data": p.loaded.description, "model": {"format": p.target.format,
                                                       "image_shape": list(p.target.image_shape),
                                                       "T": p.target.schedule.T},
                "sets": {name: int(len(idx)) for name, idx in p.sets.items()}, "score": self.settings,
                "score_note": p.note, "alpha": self.alpha, "n_models": self.n_models,
                "regressor": self.spec.attack.regressor, "regressor_options": self.regressor_options(),
                "calibration": self.spec.attack.calibration, "fit_budget": self.spec.attack.fit_budget,
                "seed": self.spec.seed, "threads": self.spec.score.threads}

    # -- scoring --------------------------------------------------------------------------

    def scorer(self, overrides: Mapping[str, Any] | None = None, target=None):
        """A Scorer for `target` (default: the audited one) with the resolved settings, overridden by `overrides`."""
        settings = {**self.settings, **(overrides or {})}
        target = target or self.target
        # The audited target's plan where the overrides keep its method; another target or method gets its own.
        plan = self.prepared.plan
        if target is not self.target or settings["method"] != self.settings["method"]:
            plan = self.spec.score.plan(target, settings)
        return self.spec.score.scorer(target, settings, self.spec.seed, plan)

    def score_sets(self, overrides: Mapping[str, Any] | None = None, *, sets=None, target=None,
                   label: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Raw scores of members, public and holdout (one cached pass over their union) and the cost record."""
        sets = sets or self.sets
        target = target or self.target
        scorer = self.scorer(overrides, target)
        union = np.unique(np.concatenate([sets[name] for name in SETS]))
        label = label or score_label(scorer.config)
        values, cost = self.score_cache.scores(scorer, target, self.images[union], union, label, self.progress,
                                               conditions=take(self.prepared.conditions, union))
        return {name: values[np.searchsorted(union, sets[name])] for name in SETS}, cost

    def base_scores(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The resolved score of the (capped) sets: what alpha, bag-size and mismatch attack."""
        if self._base_scores is None:
            self._base_scores = self.score_sets()
        return self._base_scores

    def score_images(self, images: np.ndarray, ids: np.ndarray, label: str, overrides=None, target=None):
        """Raw scores of arbitrary images (e.g. shifted copies) under sample identities `ids`, cached."""
        target = target or self.target
        return self.score_cache.scores(self.scorer(overrides, target), target, images, ids, label, self.progress,
                                       conditions=take(self.prepared.conditions, ids))

    # -- attacking ------------------------------------------------------------------------

    def evaluation(self, sets=None) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels (1 = member) of members then holdout."""
        sets = sets or self.sets
        indices = np.concatenate([sets["members"], sets["holdout"]])
        labels = np.concatenate([np.ones(len(sets["members"]), np.int64), np.zeros(len(sets["holdout"]), np.int64)])
        return self.images[indices], labels

    def fit_sets(self, raw: Mapping[str, np.ndarray], *, seeds: Sequence[int], bar=None, sets=None,
                 **options: Any) -> list[dict[str, Any]]:
        """fit_seeds on `raw`, the scores of `sets` (default: the lab's): fit on public, judge members then holdout."""
        sets = sets or self.sets
        # One array object per sets dict, so that the fingerprints (memoised per object) hash each set once.
        if self._set_images is None or self._set_images[0] is not sets:
            self._set_images = (sets, self.images[sets["public"]], *self.evaluation(sets))
        _, public_images, eval_images, labels = self._set_images
        eval_raw = np.concatenate([raw["members"], raw["holdout"]])
        return self.fit_seeds(public_images, raw["public"], eval_images, eval_raw, labels, seeds=seeds, bar=bar,
                              **options)

    def fit_seeds(self, public_images: np.ndarray, public_raw: np.ndarray, eval_images: np.ndarray,
                  eval_raw: np.ndarray, labels: np.ndarray, *, seeds: Sequence[int], bar=None,
                  **options: Any) -> list[dict[str, Any]]:
        """`fit` once per bag seed (same inputs and options), advancing `bar` after each."""
        fits = []
        for seed in seeds:
            fits.append(self.fit(public_images, public_raw, eval_images, eval_raw, labels, seed=seed, **options))
            if bar is not None:
                bar.update(1)
        return fits

    def fit(self, public_images: np.ndarray, public_raw: np.ndarray, eval_images: np.ndarray,
            eval_raw: np.ndarray, labels: np.ndarray, *, seed: int, alpha: float | None = None,
            n_models: int | None = None, width: int | None = None, baselines: bool = True,
            calibration: str | None = None, regressor: str | None = None,
            extra: Callable[[Any, Any], dict] | None = None, extra_name: str | None = None) -> dict[str, Any]:
        """Fit a QuantileAttack on the public set, predict the evaluation set, and measure every method.

        calibration and regressor default to the user's (--calibration, --regressor). Cached in
        OUT/cache/fits by a hash of the inputs and settings. `extra(attack, result)` adds
        measurements of its own (named by `extra_name`, part of the cache key).
        """
        alpha = self.alpha if alpha is None else float(alpha)
        n_models = self.n_models if n_models is None else int(n_models)
        options = self.regressor_options(width)
        calibration = calibration or self.spec.attack.calibration
        regressor = regressor or self.spec.attack.regressor
        fit_budget = self.spec.attack.fit_budget
        key = {"public_images": self.fingerprints.array(public_images), "public_raw": array_digest(public_raw),
               "eval_images": self.fingerprints.array(eval_images), "eval_raw": array_digest(eval_raw),
               "labels": array_digest(np.asarray(labels, np.int64)), "alpha": alpha, "n_models": n_models,
               "seed": seed, "baselines": baselines, "options": options, "extra": extra_name,
               "device": self.fit_device, "calibration": calibration, "regressor": regressor, "fit_budget": fit_budget}
        if regressor == "auto":  # only a selected fit depends on the selection rule
            key["selection_rule"] = SELECTION_RULE
        cached = self.fit_cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        started_cpu = time.process_time()
        attack = QuantileAttack(alpha=alpha, n_models=n_models, seed=seed, baselines=baselines,
                                device=self.fit_device, calibration=calibration, regressor=regressor,
                                fit_budget=fit_budget, **options)
        attack.fit(public_images, public_raw)
        result = attack.predict(eval_images, eval_raw)
        timings = attack.fit_info["timings"]
        info = attack.fit_info
        outcome = {"seed": seed, "alpha": alpha, "n_models": n_models, "width": attack.config.width,
                   "n_public": int(len(public_raw)), "parameters_per_regressor":
                   info["parameters_per_regressor"], "calibration": info["calibration"]["method"],
                   "n_calibration": info["calibration"]["n_calibration"], "regressor": regressor,
                   "chosen": info["selection"]["chosen"],
                   "candidates": {c["name"]: c["validation_pinball_loss"] for c in info["selection"]["candidates"]
                                  if c["skipped"] is None},
                   "fit_bag_s": timings["fit_bag_s"], "fit_single_s": timings.get("fit_single_s"),
                   "fit_total_s": timings["fit_total_s"], "fit_total_cpu_s": timings["fit_total_cpu_s"],
                   "fit_and_predict_s": time.perf_counter() - started,
                   "fit_and_predict_cpu_s": time.process_time() - started_cpu,
                   "methods": {name: method_metrics(m.score, m.decision, labels, alpha)
                               for name, m in result.methods().items()}}
        if extra is not None:
            outcome["extra"] = extra(attack, result)
        self.fit_cache.put(key, outcome)
        return outcome

    def fit_bar(self, total: int, label: str):
        return progress_bar(self.progress, total, label)


def method_metrics(score, decision, labels, alpha: float) -> dict[str, Any]:
    """One method on one evaluation set: ROC numbers and the fixed decision's counts and rates."""
    labels = np.asarray(labels, np.int64)
    tprs = metrics.tpr_at_fpr(score, labels, [0.01, 0.001, alpha])
    counts = metrics.decision_counts(np.asarray(decision, bool), labels)
    return {"auc": metrics.auc(score, labels), "tpr_at_1pct": float(tprs[0]), "tpr_at_0.1pct": float(tprs[1]),
            "tpr_at_alpha": float(tprs[2]), "decision_tpr": counts["tp"] / counts["n_members"],
            "decision_fpr": counts["fp"] / counts["n_nonmembers"], **counts}


def score_label(config) -> str:
    """A short name of a score setting: loss-t200, secmi-t100-k10, pia-t200-p4."""
    if config.method == "secmi":
        return f"secmi-t{config.t_sec}-k{config.k}"
    if config.method == "loss":
        return f"loss-t{config.t}" + (f"-d{config.n_draws}" if config.n_draws > 1 else "")
    return f"pia-t{config.t}-p{config.p:g}"


def _min_limit(*limits):
    given = [int(v) for v in limits if v is not None]
    return min(given) if given else None
