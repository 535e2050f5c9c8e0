"""The quantile-regression membership attack: per-image thresholds chosen and conformally calibrated on public data, majority vote, two baselines."""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import regress
from .atomic_io import atomic_path
from .errors import ConfigError, DataError, InputError
from .regress import calibration as conformal
from .regress import selection
from .runtime import resolve_device
from .seeds import check_seed, derive_seed
from .synthetic import SyntheticProblem, synthetic_problem
from .voting import majority_vote, mean_margin, pvalue_score, vote_threshold

__all__ = ["QuantileAttack", "AttackResult", "MethodResult", "log_scores", "majority_vote", "mean_margin",
           "pvalue_score", "vote_threshold", "SyntheticProblem", "synthetic_problem", "BAG", "SINGLE", "MARGINAL",
           "CALIBRATIONS", "REGRESSORS"]

# Method names as they appear in reports, in display order.
BAG, SINGLE, MARGINAL = "qmia_bag", "single_regressor", "marginal_threshold"

_FILE_FORMAT = "qmia-fast/quantile-attack"
# 2: calibration and regressor selection (version 1 files, the paper's raw bag, still load).
_FILE_VERSION = 2
SCORE_KINDS = ("margin", "pvalue")
CALIBRATIONS = conformal.CALIBRATION_METHODS
REGRESSORS = selection.REGRESSOR_CHOICES
ASSUMPTION = ("the public images and the evaluated non-members are exchangeable (drawn from the same distribution, "
              "independently of the target's training); a shifted public set voids the guarantee")


@dataclass
class MethodResult:
    """One method's verdict on N images: decision (bool), continuous score (higher = member), votes if a bag."""

    decision: np.ndarray
    score: np.ndarray
    votes: np.ndarray | None = None
    thresholds: np.ndarray | None = None  # [B, N] log-score thresholds at alpha


@dataclass
class AttackResult:
    """The bag's verdict (`decision`, `votes`, `score`, `thresholds`) and the baselines computed beside it."""

    decision: np.ndarray       # bool [N]: more than B/2 members of the bag vote member at alpha
    votes: np.ndarray          # int [N]: how many of the B regressors vote member
    score: np.ndarray          # float64 [N]: continuous membership score, higher = member
    thresholds: np.ndarray     # float64 [B, N]: each regressor's alpha-quantile of log-score
    log_scores: np.ndarray     # float64 [N]: log of the raw scores
    marginal: MethodResult
    single: MethodResult | None = None

    def methods(self) -> dict[str, MethodResult]:
        """name -> MethodResult for the bag and each baseline, in report order."""
        out = {BAG: MethodResult(self.decision, self.score, self.votes, self.thresholds)}
        if self.single is not None:
            out[SINGLE] = self.single
        out[MARGINAL] = self.marginal
        return out

    def report_results(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (membership score, decision), the form report.build_report takes."""
        return {name: (method.score, method.decision) for name, method in self.methods().items()}


def log_scores(scores, n: int | None = None, name: str = "scores") -> np.ndarray:
    """Raw scores (positive, finite, [N]) -> float64 log-scores, the regression target."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    values = np.asarray(scores)
    if values.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of raw scores [N], got shape {values.shape}")
    if values.dtype.kind not in "iuf":
        raise InputError(f"{name} must be numeric, got dtype {values.dtype}")
    if n is not None and values.shape[0] != n:
        raise InputError(f"{name} has {values.shape[0]} entries but there are {n} images; pass one score per image")
    values = values.astype(np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name} must be finite and > 0 (raw scores, lower = member); "
                         f"found {values[first]} at index {first} ({int(bad.sum())} bad in all)")
    return np.log(values)


class QuantileAttack:
    """Quantile-regression membership attack (Tang et al., ICML 2024): per-image thresholds, majority vote.

    fit(images, scores) on public non-members trains `n_models` regressors of log(score) on
    the image; predict() calls an image a member iff more than half of them put its
    log-score strictly below their alpha-quantile.

    calibration="conformal" (default): a seeded part of the public set (regress.calibration:
    20%, at least 1/alpha - 1 images, at most half) is held out of all fitting and
    selection; every threshold is shifted by the floor(alpha (n + 1))-th smallest
    calibration residual log s - q(x) of the vote's threshold, so that for non-members
    exchangeable with the public set P(member call) <= alpha in finite samples (split
    conformal quantile regression, Romano, Patterson and Candes, 2019). The baselines are
    calibrated the same way. A public set too small for alpha falls back to the raw rule
    with a warning in fit_info. calibration="none": the paper's raw rule on all of P.

    regressor="auto" (default): the candidates of regress.selection, in order while the
    budget lasts (fit_budget seconds, or by default twice the paper bag's estimated work),
    each judged by its members' pinball loss at alpha on their own held-out public
    images; a later candidate wins only if clearly lower (selection.SWITCH_STANDARD_ERRORS).
    A name ("paper", "full", "full-wide", ...) fits that setting alone. Regressor options
    (width, depth, stem_stride, head, ensemble, epochs, ...; see regress.RegressorConfig)
    override every candidate's setting.
    """

    def __init__(self, alpha: float = 0.01, n_models: int = 7, levels: Sequence[float] | None = None,
                 seed: int = 0, *, score: str = "margin", calibration: str = "conformal", regressor: str = "auto",
                 fit_budget: float | None = None, baselines: bool = True, progress: bool = False,
                 **regressor_options):
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not (0.0 < alpha < 1.0):
            raise ConfigError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
        if not isinstance(n_models, (int, np.integer)) or isinstance(n_models, bool) or n_models < 1:
            raise ConfigError(f"n_models must be a positive integer, got {n_models!r}")
        if score not in SCORE_KINDS:
            raise ConfigError(f"score must be one of {', '.join(SCORE_KINDS)}, got {score!r}")
        if calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
        if "calibrate" in regressor_options:
            raise ConfigError("calibrate= is replaced by calibration='conformal' (the default) or 'none'")
        self.alpha = float(alpha)
        self.n_models = int(n_models)
        self.levels = _levels_with_alpha(levels, self.alpha)
        if score == "pvalue" and len(self.levels) < 2:
            raise ConfigError("score='pvalue' needs at least two quantile levels, e.g. levels=[0.01, 0.05, 0.2]")
        self.seed = check_seed(seed)
        self.score_kind = score
        self.calibration = calibration
        self.regressor = selection.check_regressor(regressor)
        self.fit_budget = selection.check_budget(fit_budget)
        self.baselines = bool(baselines)
        self.progress = bool(progress)
        known = {f.name for f in fields(regress.RegressorConfig)}
        unknown = sorted(set(regressor_options) - known)
        if unknown:
            raise ConfigError(f"unknown QuantileAttack option(s) {', '.join(unknown)}; "
                              f"regressor options are {', '.join(sorted(known))}")
        self.overrides = dict(regressor_options)
        # The settings as given; after fit(), the chosen candidate's. Validated now so that a bad option
        # fails before any work.
        self.config = regress.RegressorConfig(**self.overrides).validate()
        self.bag: regress.QuantileBag | None = None
        self.single: regress.QuantileBag | None = None
        self.marginal_threshold: float | None = None
        self.fit_info: dict = {}

    @property
    def fitted_levels(self) -> list[float]:
        """The levels the regressors predict: the attack's, plus the extra ones of a "levels" head."""
        return list(self.bag.levels) if self.bag is not None else list(self.levels)

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, images, scores, aux=None) -> "QuantileAttack":
        """Fit on public non-members: images uint8 N x C x H x W (or floats in [0, 1]), raw scores [N]."""
        images_t = regress.as_image_tensor(images)
        targets = log_scores(scores, images_t.shape[0])
        aux_t = regress.as_aux_tensor(aux, images_t)
        n = images_t.shape[0]
        if n < 10:
            raise InputError(f"images: the public set needs at least 10 images to fit quantiles, got {n}")
        started, started_cpu = time.perf_counter(), time.process_time()
        calibration = self._plan_calibration(n)
        train, held = calibration.pop("_train"), calibration.pop("_calibration")
        self.marginal_threshold, calibration["marginal"] = self._marginal(targets, calibration["method"])

        def part(index):
            index_t = torch.from_numpy(index)
            return images_t[index_t], targets[index], None if aux_t is None else aux_t[index_t]

        train_images, train_targets, train_aux = part(train)
        chosen, record = selection.select(train_images, train_targets, train_aux, regressor=self.regressor,
                                          overrides=self.overrides, alpha=self.alpha, levels=self.levels,
                                          n_models=self.n_models, seed=self.seed, fit_budget=self.fit_budget,
                                          progress=self.progress)
        self.bag, self.config = chosen.bag, chosen.config
        timings = {"select_s": sum(c["fit_s"] or 0.0 for c in record["candidates"]), "fit_bag_s": chosen.seconds}
        self.single, single_how = None, None
        if self.baselines:
            if chosen.config.ensemble == "full":
                # Member 0 already is one regressor on the whole training part but its own fold.
                self.single, single_how = self.bag.member(0), "member 0 of the full-data ensemble, alone"
                timings["fit_single_s"] = 0.0
            else:
                single_seed = derive_seed(self.seed, 1)
                plan = regress.holdout_plan(len(train), single_seed, self.config.holdout_frac)
                self.single = regress.fit_bag(train_images, train_targets, [plan], [single_seed], chosen.levels,
                                              self.config, aux=train_aux, progress=self.progress,
                                              label="single quantile regressor")
                single_how = "one regressor on the training part but a random holdout_frac early-stopping slice"
                timings["fit_single_s"] = self.single.history.seconds
        if calibration["method"] == "conformal":
            t0 = time.perf_counter()
            cal_images, cal_targets, cal_aux = part(held)
            calibration["bag"] = self._calibrate(self.bag, cal_images, cal_targets, cal_aux)
            if self.single is not None:
                calibration["single_regressor"] = self._calibrate(self.single, cal_images, cal_targets, cal_aux)
            timings["calibrate_s"] = time.perf_counter() - t0
        timings["fit_total_s"] = time.perf_counter() - started
        timings["fit_total_cpu_s"] = time.process_time() - started_cpu
        self.fit_info = {"n_public": n, "n_training": int(len(train)), "image_shape": list(images_t.shape[1:]),
                         "n_aux_channels": 0 if aux_t is None else int(aux_t.shape[1]),
                         "marginal_threshold": self.marginal_threshold, "calibration": calibration,
                         "selection": record, "single_regressor": single_how,
                         "parameters_per_regressor": regress.count_parameters(self.bag.network) // self.n_models,
                         "timings": timings}
        return self

    def _plan_calibration(self, n: int) -> dict:
        """Which public images train and which calibrate, and what the report says about it."""
        everything = np.arange(n)
        if self.calibration == "none":
            return {"method": "none", "requested": "none", "n_calibration": 0, "_train": everything,
                    "_calibration": everything[:0],
                    "guarantee": "none: the paper's raw rule; its FPR is only about alpha (it overshot at small "
                                 "alpha in this package's experiments)"}
        n_cal = conformal.calibration_size(n, self.alpha)
        if n_cal == 0:
            return {"method": "none", "requested": "conformal", "n_calibration": 0, "_train": everything,
                    "_calibration": everything[:0], "warning": conformal.too_small_message(n, self.alpha),
                    "guarantee": "none: the public set is too small to calibrate at alpha"}
        train, held = conformal.split_public(n, n_cal, derive_seed(self.seed, 2))
        rank = conformal.conformal_rank(n_cal, self.alpha)
        return {"method": "conformal", "requested": "conformal", "kind": "split conformal (Romano, Patterson and "
                "Candes, 2019)", "n_calibration": int(n_cal), "n_training": int(len(train)), "rank": rank,
                "fpr_bound": rank / (n_cal + 1), "assumption": ASSUMPTION,
                "guarantee": f"P(member call) <= {rank}/{n_cal + 1} <= alpha for a non-member, over the draw of the "
                             f"{n_cal} calibration images and the non-member (marginal: one run's FPR varies "
                             f"around it)",
                "_train": train, "_calibration": held}

    def _marginal(self, targets: np.ndarray, method: str) -> tuple[float, dict]:
        """The marginal threshold: the floor(alpha (n + 1))-th smallest public log-score (conformal), else a quantile."""
        rank = conformal.conformal_rank(len(targets), self.alpha) if method == "conformal" else 0
        if rank >= 1:
            value = float(np.sort(targets)[rank - 1])
            return value, {"rank": rank, "n_calibration": int(len(targets)), "fpr_bound": rank / (len(targets) + 1)}
        return float(np.quantile(targets, self.alpha)), {"rank": None, "n_calibration": 0, "fpr_bound": None}

    def _calibrate(self, bag: regress.QuantileBag, images, targets: np.ndarray, aux) -> dict:
        """Shift every level of `bag` by the conformal rank of the vote threshold's calibration residuals."""
        quantiles = bag.predict(images, aux, threads=self.config.threads, calibrated=False)  # [B, n, K]
        shifts, alpha_shift = [], None
        for k, level in enumerate(bag.levels):
            residual = targets - vote_threshold(quantiles[:, :, k])
            found = conformal.conformal_shift(residual, level)
            shifts.append(found.shift if found is not None else 0.0)  # a level too fine for n keeps its raw value
            if math.isclose(level, self.alpha, rel_tol=0.0, abs_tol=1e-12):
                alpha_shift = found
        bag.set_shifts(shifts)
        return {"shift": alpha_shift.shift, "rank": alpha_shift.rank, "n_calibration": alpha_shift.n_calibration,
                "fpr_bound": alpha_shift.bound}

    # -- prediction ------------------------------------------------------------------------

    def predict(self, images, scores, aux=None, batch_size: int = 1024) -> AttackResult:
        """Decide membership for images with raw scores [N] (lower = member); see AttackResult."""
        if self.bag is None:
            raise ConfigError("this QuantileAttack is not fitted yet: call fit(images, scores) first or load() one")
        images_t = regress.as_image_tensor(images)
        fitted = tuple(self.fit_info.get("image_shape") or ())
        if fitted and tuple(images_t.shape[1:]) != fitted:
            raise InputError(f"images are {'x'.join(map(str, images_t.shape[1:]))} but this attack was fitted on "
                             f"{'x'.join(map(str, fitted))} images; predict on images of the fitted size")
        y = log_scores(scores, images_t.shape[0])
        levels = self.fitted_levels
        alpha_index = levels.index(self.alpha)

        def verdict(bag):
            quantiles = bag.predict(images_t, aux, batch_size=batch_size, threads=self.config.threads)  # [B, N, K]
            thresholds = np.ascontiguousarray(quantiles[:, :, alpha_index])
            votes, decision, margin = majority_vote(y, thresholds, with_margin=True)
            score = pvalue_score(y, quantiles, levels) if self.score_kind == "pvalue" else margin
            return MethodResult(decision, score, votes, thresholds)

        bag = verdict(self.bag)
        marginal_score = self.marginal_threshold - y
        marginal = MethodResult(decision=marginal_score > 0, score=marginal_score)
        single = verdict(self.single) if self.single is not None else None
        return AttackResult(decision=bag.decision, votes=bag.votes, score=bag.score, thresholds=bag.thresholds,
                            log_scores=y, marginal=marginal, single=single)

    # -- persistence -----------------------------------------------------------------------

    def params(self) -> dict:
        """The resolved configuration, as recorded in reports and saved files."""
        return {"alpha": self.alpha, "n_models": self.n_models, "levels": list(self.levels), "seed": self.seed,
                "score": self.score_kind, "calibration": self.calibration, "regressor": self.regressor,
                "fit_budget": self.fit_budget, "baselines": self.baselines, "options": dict(self.overrides),
                "regressor_settings": self.config.to_dict()}

    def save(self, path) -> None:
        """Write the fitted attack to one file (plain tensors and numbers: it loads with weights_only=True)."""
        if self.bag is None:
            raise ConfigError("cannot save an unfitted QuantileAttack; call fit() first")
        state = {"format": _FILE_FORMAT, "version": _FILE_VERSION, "params": self.params(),
                 "marginal_threshold": self.marginal_threshold, "fit_info": self.fit_info,
                 "bag": self.bag.state(), "single": None if self.single is None else self.single.state()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path, device: str | None = None) -> "QuantileAttack":
        """Read a file written by save(); `device` overrides the device the regressors run on."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"fitted attack file {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise DataError(f"{str(path)!r} is not a fitted QuantileAttack file ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or state.get("format") != _FILE_FORMAT:
            raise DataError(f"{str(path)!r} is not a fitted QuantileAttack file (written by QuantileAttack.save)")
        if state.get("version") not in (1, _FILE_VERSION):
            raise DataError(f"{str(path)!r} has attack file version {state.get('version')!r}; "
                            f"this qmia-fast reads versions 1 and {_FILE_VERSION}")
        params = dict(state["params"])
        if state["version"] == 1:  # the paper's bag with the raw rule (or its per-member out-of-bag offsets)
            settings = dict(params["regressor"])
            params.update(calibration="none", regressor="paper", fit_budget=None, options=dict(settings),
                          regressor_settings=settings)
        options = dict(params["options"])
        settings = dict(params["regressor_settings"])
        if device is not None:
            options["device"] = settings["device"] = device
        attack = cls(params["alpha"], params["n_models"], params["levels"], params["seed"], score=params["score"],
                     calibration=params["calibration"], regressor=params["regressor"],
                     fit_budget=params["fit_budget"], baselines=params["baselines"], **options)
        attack.config = regress.RegressorConfig(**settings).validate()
        target = resolve_device(settings["device"], default="cpu")
        attack.bag = regress.QuantileBag.from_state(state["bag"])
        attack.bag.network.to(target)
        if state["single"] is not None:
            attack.single = regress.QuantileBag.from_state(state["single"])
            attack.single.network.to(target)
        attack.marginal_threshold = float(state["marginal_threshold"])
        attack.fit_info = state["fit_info"]
        return attack


def _levels_with_alpha(levels, alpha: float) -> list[float]:
    # The decision is taken at alpha, so alpha is always one of the fitted levels.
    if levels is None:
        return [alpha]
    try:
        values = {float(v) for v in levels}
    except (TypeError, ValueError):
        raise ConfigError(f"levels must be a sequence of numbers in (0, 1), got {levels!r}") from None
    values = [v for v in values if not math.isclose(v, alpha, rel_tol=0.0, abs_tol=1e-12)]
    return regress.check_levels(sorted(values + [alpha]))
