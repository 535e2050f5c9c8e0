"""The quantile-regression membership attack: a bag of per-image thresholds, majority vote, and its two baselines."""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import regress
from .arrays import to_tensor
from .atomic_io import atomic_path
from .errors import ConfigError, DataError, InputError
from .runtime import resolve_device
from .seeds import check_seed

# Method names as they appear in reports, in display order.
BAG, SINGLE, MARGINAL = "qmia_bag", "single_regressor", "marginal_threshold"

_FILE_FORMAT = "qmia-fast/quantile-attack"
_FILE_VERSION = 1
SCORE_KINDS = ("margin", "pvalue")


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
    """Quantile-regression membership attack (Tang et al., ICML 2024) with bagging and majority vote.

    fit(images, scores) on public non-members trains `n_models` regressors of
    log(score) on the image, each on its own bootstrap resample and seed; predict()
    calls an image a member iff more than half of them put its log-score strictly below
    their alpha-quantile. On non-members the false-positive rate is about `alpha`.

    calibrate=True shifts each regressor's quantiles so that exactly the level's share of
    its out-of-bag public images falls below them (conformalised quantile regression); on
    the synthetic problem it did not improve the bag's FPR on average (see the README), so
    it is off by default.

    Regressor settings (width, depth, stem_stride, head_width, epochs, batch_size, lr,
    weight_decay, holdout_frac, patience, monotone, device, batched, threads) pass through
    as keyword options; see `regress.RegressorConfig` for their defaults.
    """

    def __init__(self, alpha: float = 0.01, n_models: int = 7, levels: Sequence[float] | None = None,
                 seed: int = 0, *, score: str = "margin", calibrate: bool = False, baselines: bool = True,
                 progress: bool = False, **regressor_options):
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not (0.0 < alpha < 1.0):
            raise ConfigError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
        if not isinstance(n_models, (int, np.integer)) or isinstance(n_models, bool) or n_models < 1:
            raise ConfigError(f"n_models must be a positive integer, got {n_models!r}")
        if score not in SCORE_KINDS:
            raise ConfigError(f"score must be one of {', '.join(SCORE_KINDS)}, got {score!r}")
        self.alpha = float(alpha)
        self.n_models = int(n_models)
        self.levels = _levels_with_alpha(levels, self.alpha)
        if score == "pvalue" and len(self.levels) < 2:
            raise ConfigError("score='pvalue' needs at least two quantile levels, e.g. levels=[0.01, 0.05, 0.2]")
        self.seed = check_seed(seed)
        self.score_kind = score
        self.calibrate = bool(calibrate)
        self.baselines = bool(baselines)
        self.progress = bool(progress)
        known = {f.name for f in fields(regress.RegressorConfig)}
        unknown = sorted(set(regressor_options) - known)
        if unknown:
            raise ConfigError(f"unknown QuantileAttack option(s) {', '.join(unknown)}; "
                              f"regressor options are {', '.join(sorted(known))}")
        self.config = regress.RegressorConfig(**regressor_options).validate()
        self.bag: regress.QuantileBag | None = None
        self.single: regress.QuantileBag | None = None
        self.marginal_threshold: float | None = None
        self.fit_info: dict = {}

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, images, scores, aux=None) -> "QuantileAttack":
        """Fit on public non-members: images uint8 N x C x H x W (or floats in [0, 1]), raw scores [N]."""
        images_t = regress.as_image_tensor(images)
        targets = log_scores(scores, images_t.shape[0])
        n = images_t.shape[0]
        if n < 10:
            raise InputError(f"images: the public set needs at least 10 images to fit quantiles, got {n}")
        started = time.perf_counter()
        self.marginal_threshold = float(np.quantile(targets, self.alpha))
        bag_seeds = [regress.derive_seed(self.seed, 0, j) for j in range(self.n_models)]
        plans = regress.bootstrap_plans(n, bag_seeds, self.config.holdout_frac)
        self.bag = regress.fit_bag(images_t, targets, plans, bag_seeds, self.levels, self.config, aux=aux,
                                   progress=self.progress, label=f"bag of {self.n_models} quantile regressors")
        timings = {"fit_bag_s": self.bag.history.seconds}
        if self.calibrate:
            # Every image a member never drew is fair calibration data for it, not only its early-stopping slice.
            out_of_bag = [np.setdiff1d(np.arange(n), plan.train) for plan in plans]
            started_calibration = time.perf_counter()
            self.bag.calibrate(images_t, targets, out_of_bag, aux=aux, threads=self.config.threads)
            timings["calibrate_bag_s"] = time.perf_counter() - started_calibration
        if self.baselines:
            single_seed = regress.derive_seed(self.seed, 1)
            plan = regress.holdout_plan(n, single_seed, self.config.holdout_frac)
            self.single = regress.fit_bag(images_t, targets, [plan], [single_seed], self.levels, self.config,
                                          aux=aux, progress=self.progress, label="single quantile regressor")
            timings["fit_single_s"] = self.single.history.seconds
            if self.calibrate:
                self.single.calibrate(images_t, targets, [plan.val], aux=aux, threads=self.config.threads)
        timings["fit_total_s"] = time.perf_counter() - started
        self.fit_info = {"n_public": n, "image_shape": list(images_t.shape[1:]),
                         "n_aux_channels": 0 if aux is None else int(np.shape(aux)[1]),
                         "marginal_threshold": self.marginal_threshold,
                         "calibration_offsets": (self.bag.offsets[:, self.levels.index(self.alpha)].tolist()
                                                 if self.calibrate else None),
                         "parameters_per_regressor": regress.count_parameters(self.bag.network) // self.n_models,
                         "timings": timings}
        return self

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
        alpha_index = self.levels.index(self.alpha)
        quantiles = self.bag.predict(images_t, aux, batch_size=batch_size, threads=self.config.threads)  # [B, N, K]
        thresholds = np.ascontiguousarray(quantiles[:, :, alpha_index])
        votes, decision, margin = majority_vote(y, thresholds, with_margin=True)
        score = pvalue_score(y, quantiles, self.levels) if self.score_kind == "pvalue" else margin

        marginal_score = self.marginal_threshold - y
        marginal = MethodResult(decision=marginal_score > 0, score=marginal_score)
        single = None
        if self.single is not None:
            single_quantiles = self.single.predict(images_t, aux, batch_size=batch_size, threads=self.config.threads)
            single_thresholds = np.ascontiguousarray(single_quantiles[:, :, alpha_index])
            single_votes, single_decision, single_margin = majority_vote(y, single_thresholds, with_margin=True)
            single_score = (pvalue_score(y, single_quantiles, self.levels) if self.score_kind == "pvalue"
                            else single_margin)
            single = MethodResult(single_decision, single_score, single_votes, single_thresholds)
        return AttackResult(decision=decision, votes=votes, score=score, thresholds=thresholds,
                            log_scores=y, marginal=marginal, single=single)

    # -- persistence -----------------------------------------------------------------------

    def params(self) -> dict:
        """The resolved configuration, as recorded in reports and saved files."""
        return {"alpha": self.alpha, "n_models": self.n_models, "levels": list(self.levels), "seed": self.seed,
                "score": self.score_kind, "calibrate": self.calibrate, "baselines": self.baselines,
                "regressor": self.config.to_dict()}

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
        if state.get("version") != _FILE_VERSION:
            raise DataError(f"{str(path)!r} has attack file version {state.get('version')!r}; "
                            f"this qmia-fast reads version {_FILE_VERSION}")
        params = dict(state["params"])
        options = dict(params.pop("regressor"))
        if device is not None:
            options["device"] = device
        attack = cls(params["alpha"], params["n_models"], params["levels"], params["seed"],
                     score=params["score"], calibrate=params["calibrate"], baselines=params["baselines"],
                     **options)
        target = resolve_device(options["device"], default="cpu")
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


# --- aggregation -----------------------------------------------------------------------------

def majority_vote(log_score: np.ndarray, thresholds: np.ndarray, with_margin: bool = False) -> tuple[np.ndarray, ...]:
    """The vote kernel: (votes int32 [N], decision bool [N]) for log-scores [N] against thresholds [B, N], and
    with `with_margin` also the bag's mean margin q_alpha(x) - log s(x) [N], its membership score.

    float32 inputs take the kernel's float32 path (a float32 margin, summed in float64);
    anything else runs in float64 and the margin stays float64, since rounding it to
    float32 would merge distinct scores into ties and so move the exact ROC.
    """
    from .kernels import vote

    single = np.asarray(log_score).dtype == np.float32 and np.asarray(thresholds).dtype == np.float32
    dtype = np.float32 if single else np.float64
    votes, decision, margin = vote(to_tensor(log_score, dtype), to_tensor(thresholds, dtype))
    result = (np.asarray(votes.numpy(), dtype=np.int32), np.asarray(decision.numpy(), dtype=bool))
    return (*result, margin.numpy()) if with_margin else result


def mean_margin(log_score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The bag's mean of q_alpha(x) - log s(x): the vote kernel's margin (float64 unless both inputs are float32)."""
    return majority_vote(log_score, thresholds, with_margin=True)[2]


def pvalue_score(log_score: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Minus the bag's mean estimated CDF of log s(x): the p-value read off the predicted quantiles.

    quantiles [B, N, K] at increasing `levels`; each regressor's CDF is the piecewise-linear
    curve through (q_k, level_k), extended linearly past the end levels so that scores
    beyond the outermost quantile stay ordered. Higher = member.
    """
    levels_arr = np.asarray(levels, dtype=np.float64)
    q = np.sort(quantiles, axis=2)  # non-monotone heads may cross; a CDF cannot
    n_levels = q.shape[2]
    y = log_score[None, :, None]
    segment = np.clip((q < y).sum(axis=2), 1, n_levels - 1)  # upper knot of the segment holding y
    upper = np.take_along_axis(q, segment[..., None], axis=2)[..., 0]
    lower = np.take_along_axis(q, segment[..., None] - 1, axis=2)[..., 0]
    level_hi, level_lo = levels_arr[segment], levels_arr[segment - 1]
    width = np.maximum(upper - lower, 1e-12)
    cdf = level_lo + (log_score[None, :] - lower) * (level_hi - level_lo) / width
    return -cdf.mean(axis=0)


# --- a synthetic problem for tests and benchmarks ---------------------------------------------

@dataclass
class SyntheticProblem:
    """Images whose non-member log-score spread grows with brightness, and members shifted down."""

    images: np.ndarray      # uint8 N x 1 x S x S
    scores: np.ndarray      # float64 [N], raw (positive, lower = member)
    labels: np.ndarray      # int64 [N], 1 = member
    brightness: np.ndarray  # float64 [N] in [0, 1]
    meta: dict = field(default_factory=dict)


def synthetic_problem(n_nonmembers: int, n_members: int = 0, image_size: int = 8, seed: int = 0,
                      member_shift: float = 0.3, base_spread: float = 0.1, spread_slope: float = 1.0
                      ) -> SyntheticProblem:
    """A heteroscedastic test problem where per-image thresholds must beat one global threshold.

    Image brightness b ~ U(0, 1); pixels = b plus noise. Non-member log-score =
    (base_spread + spread_slope * b) * z with z ~ N(0, 1); members subtract member_shift.
    On dark images a small shift is far outside the narrow non-member spread; a global
    threshold is set by the bright, wide images and misses them.
    """
    rng = np.random.default_rng(seed)
    n = n_nonmembers + n_members
    brightness = rng.uniform(0.0, 1.0, n)
    pixels = brightness[:, None, None, None] + 0.1 * rng.standard_normal((n, 1, image_size, image_size))
    images = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
    labels = np.concatenate([np.zeros(n_nonmembers, np.int64), np.ones(n_members, np.int64)])
    log_score = (base_spread + spread_slope * brightness) * rng.standard_normal(n) - member_shift * labels
    meta = dict(image_size=image_size, seed=seed, member_shift=member_shift, base_spread=base_spread,
                spread_slope=spread_slope)
    return SyntheticProblem(images, np.exp(log_score), labels, brightness, meta)
