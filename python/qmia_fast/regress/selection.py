"""Choosing the regressor on public data only: named settings, the candidates of `auto`, their held-out pinball loss at alpha, the fitting budget."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..seeds import derive_seed
from .bag import QuantileBag
from .config import RegressorConfig, check_levels
from .fit import SamplePlan, bootstrap_plans, fit_bag, full_data_plans
from .network import BaggedResNet, auto_stem_stride

AUTO = "auto"
# Named settings (any RegressorConfig field may still be set explicitly on top). "paper" is the
# method paper's bag and this package's earlier default: bootstrap resamples, pinball loss at alpha.
NAMED: dict[str, dict[str, Any]] = {
    "paper": dict(ensemble="bootstrap", head="quantile"),
    "full": dict(ensemble="full", head="quantile"),
    "full-gaussian": dict(ensemble="full", head="gaussian"),
    "full-levels": dict(ensemble="full", head="levels"),
    "full-wide": dict(ensemble="full", head="quantile", width=32),
    "full-fine": dict(ensemble="full", head="quantile", stem_stride="fine"),
    "full-gaussian-wide": dict(ensemble="full", head="gaussian", width=32),
    "full-gaussian-fine": dict(ensemble="full", head="gaussian", stem_stride="fine"),
}
# What `auto` tries, in this order, while the budget lasts (the first always runs): most promising
# first, by the held-out losses measured on the demo (README, "The quantile attack"). The default
# budget covers the first two there.
AUTO_CANDIDATES = ("full-gaussian", "full-levels", "full-gaussian-fine", "full-gaussian-wide", "full", "full-fine",
                   "full-wide", "paper")
REGRESSOR_CHOICES = (AUTO, *NAMED)
# The default budget of `auto`, in estimated training work: this many times the work of the paper's
# bag of the same size plus its single-regressor baseline on the same public set. A work budget
# (not seconds) keeps the default selection the same on every machine.
DEFAULT_WORK_BUDGET = 2.0
# Levels fitted besides alpha by the "levels" head, as multiples of alpha (capped at the median).
EXTRA_LEVEL_FACTORS = (3.0, 10.0)
MEDIAN = 0.5


def check_regressor(name) -> str:
    if name not in REGRESSOR_CHOICES:
        raise ConfigError(f"regressor must be one of {', '.join(REGRESSOR_CHOICES)}, got {name!r}")
    return name


def check_budget(seconds) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer, np.floating)) \
            or not np.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"fit_budget must be a number of seconds > 0 (or None: the default work budget), "
                          f"got {seconds!r}")
    return float(seconds)


def named_config(name: str, overrides: dict[str, Any], image_hw: Sequence[int]) -> RegressorConfig:
    """The RegressorConfig of a named setting with the user's explicit options on top (they always win)."""
    settings = dict(NAMED[name])
    automatic = auto_stem_stride(*image_hw)
    # Resolved here, so that two candidates that would train the same network are seen to be the same.
    # "fine": half the automatic patch size, four times the first stage's resolution, for structure
    # smaller than a patch (full resolution on images up to 27 pixels).
    settings["stem_stride"] = max(1, automatic // 2) if settings.get("stem_stride") == "fine" else automatic
    return RegressorConfig(**{**settings, **overrides}).validate()


def fitted_levels(config: RegressorConfig, alpha: float, levels: Sequence[float]) -> list[float]:
    """The levels a regressor is trained at: the attack's, plus a few above alpha for the "levels" head."""
    values = set(float(v) for v in levels)
    if config.head == "levels":
        if alpha < MEDIAN:
            values |= {min(MEDIAN, factor * alpha) for factor in EXTRA_LEVEL_FACTORS} | {MEDIAN}
    return check_levels(sorted(values))


def sample_plans(config: RegressorConfig, n: int, seeds: Sequence[int], fold_seed: int) -> list[SamplePlan]:
    if config.ensemble == "full":
        return full_data_plans(n, seeds, config.holdout_frac, fold_seed)
    return bootstrap_plans(n, seeds, config.holdout_frac)


def training_work(config: RegressorConfig, image_shape: Sequence[int], n_channels: int, n_levels: int,
                  plans: Sequence[SamplePlan]) -> float:
    """Estimated training work, in multiply-accumulates: forward MACs per image x 3 (with backward) x draws x epochs.

    Early stopping usually ends training sooner; the estimate is the planned upper bound,
    which ranks candidates by cost the same way on every machine.
    """
    height, width = image_shape[-2:]
    stride = config.stem_stride or auto_stem_stride(height, width)
    net = BaggedResNet(1, n_channels, n_levels, config.width, config.depth, config.head_width, config.monotone,
                       stride, head=config.network_head, levels=[MEDIAN] * n_levels)
    macs = _conv_macs(net, n_channels, height, width)
    draws = sum(len(p.train) + len(p.val) / 3.0 for p in plans)
    return float(macs * 3.0 * draws * config.epochs)


def _conv_macs(net: BaggedResNet, n_channels: int, height: int, width: int) -> float:
    total = [0.0]

    def count(module, inputs, output):
        kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        total[0] += float(output.numel()) * kernel

    handles = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, n_channels, height, width))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


@dataclass
class Candidate:
    """One regressor setting fitted on the training part, with its held-out pinball loss at alpha."""

    name: str
    config: RegressorConfig
    levels: list[float]
    bag: QuantileBag | None = None
    plans: list[SamplePlan] = field(default_factory=list)
    validation_loss: float = float("nan")   # mean pinball loss at alpha, log-score units
    n_validation: int = 0
    # Per held-out image (sorted indices into the training part): its mean loss over the members that
    # held it out, so two candidates can be compared image by image.
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    image_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    comparison: dict | None = None
    work: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    skipped: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "validation_pinball_loss": self.validation_loss,
                "n_validation": self.n_validation, "estimated_work": self.work, "fit_s": self.seconds,
                "fit_cpu_s": self.cpu_seconds, "skipped": self.skipped, "comparison": self.comparison,
                "settings": {f: getattr(self.config, f) for f in _DESCRIBED}}


_DESCRIBED = ("ensemble", "head", "width", "depth", "stem_stride", "epochs")


def fit_candidate(candidate: Candidate, images, targets: np.ndarray, aux, *, alpha: float, n_models: int,
                  seed: int, progress: bool = False) -> Candidate:
    """Train the candidate's ensemble on (images, targets) and measure its held-out pinball loss at alpha.

    Member seeds are derive_seed(seed, 0, j) for every candidate, so candidates are compared
    on the same initialisations (the paper's setting reproduces the earlier default exactly).
    Held-out: each member's own early-stopping images (bootstrap: out of bag; full: its fold).
    """
    seeds = [derive_seed(seed, 0, j) for j in range(n_models)]
    plans = sample_plans(candidate.config, len(targets), seeds, derive_seed(seed, 3))
    wall, cpu = time.perf_counter(), time.process_time()
    bag = fit_bag(images, targets, plans, seeds, candidate.levels, candidate.config, aux=aux, progress=progress,
                  label=f"{candidate.name}: {n_models} quantile regressors")
    candidate.seconds, candidate.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    candidate.bag, candidate.plans = bag, plans
    held = held_out_pinball(bag, images, targets, aux, plans, alpha, candidate.levels, candidate.config.threads)
    candidate.validation_loss, candidate.n_validation, candidate.image_index, candidate.image_loss = held
    return candidate


def held_out_pinball(bag: QuantileBag, images, targets: np.ndarray, aux, plans: Sequence[SamplePlan], alpha: float,
                     levels: Sequence[float], threads: int | None):
    """Mean over members and their held-out images of rho_alpha(y - q_alpha(x)), in log-score units.

    Returns (mean loss, number of (member, image) pairs, held-out image indices, each one's
    mean loss over the members that held it out).
    """
    union = np.unique(np.concatenate([p.val for p in plans]))
    if union.size == 0:
        return float("nan"), 0, union, np.zeros(0)
    index = list(levels).index(alpha)
    part_aux = None if aux is None else aux[torch.from_numpy(union)]
    predicted = bag.predict(images[torch.from_numpy(union)], part_aux, threads=threads, calibrated=False)
    total, count = np.zeros(union.size), np.zeros(union.size)
    losses = []
    for member, plan in enumerate(plans):
        rows = np.searchsorted(union, plan.val)
        u = targets[plan.val] - predicted[member, rows, index]
        loss = np.maximum(alpha * u, (alpha - 1.0) * u)
        np.add.at(total, rows, loss)
        np.add.at(count, rows, 1.0)
        losses.append(loss)
    values = np.concatenate(losses)
    return float(values.mean()), int(values.size), union, total / count


# A later candidate replaces the current choice only if its held-out loss is lower by more than this
# many standard errors of the image-by-image difference: at small alpha the loss rests on the few
# images below the quantile, and a noise win must not displace the more promising earlier candidate.
SWITCH_STANDARD_ERRORS = 2.0
# Recorded with auto fits in caches, so that fits chosen under another rule are never read back.
SELECTION_RULE = "paired-2se"


def compare(candidate: Candidate, incumbent: Candidate) -> dict:
    """The candidate's held-out loss minus the incumbent's on the images both held out: mean, standard error, n."""
    common, mine, theirs = np.intersect1d(candidate.image_index, incumbent.image_index, return_indices=True)
    if common.size < 2:
        return {"against": incumbent.name, "difference": float("nan"), "standard_error": float("nan"), "n": 0}
    difference = candidate.image_loss[mine] - incumbent.image_loss[theirs]
    return {"against": incumbent.name, "difference": float(difference.mean()),
            "standard_error": float(difference.std(ddof=1) / np.sqrt(common.size)), "n": int(common.size)}


def select(images, targets: np.ndarray, aux, *, regressor: str, overrides: dict[str, Any], alpha: float,
           levels: Sequence[float], n_models: int, seed: int, fit_budget: float | None, progress: bool = False,
           log: Callable[[str], None] | None = None) -> tuple[Candidate, dict[str, Any]]:
    """Fit the named setting, or (regressor="auto") every candidate the budget allows; keep the best held-out loss.

    A later candidate wins only if its loss is clearly lower (SWITCH_STANDARD_ERRORS standard
    errors of the paired difference), so ties, noise and NaN losses keep the earlier, more
    promising one. Returns the chosen candidate (fitted) and the selection record for the
    report. The choice is deterministic for a seed (and, with the default work budget, the
    same on every machine).
    """
    log = log or (lambda text: None)
    image_hw = tuple(images.shape[2:])
    n_channels = images.shape[1] + (0 if aux is None else aux.shape[1])
    names = AUTO_CANDIDATES if regressor == AUTO else (regressor,)
    candidates, seen = [], set()
    for name in names:
        config = named_config(name, overrides, image_hw)
        key = tuple(sorted(config.to_dict().items()))
        if key in seen:  # an explicit option made two candidates the same
            continue
        seen.add(key)
        candidate = Candidate(name, config, fitted_levels(config, alpha, levels))
        seeds = [derive_seed(seed, 0, j) for j in range(n_models)]
        plans = sample_plans(config, len(targets), seeds, derive_seed(seed, 3))
        candidate.work = training_work(config, image_hw, n_channels, len(candidate.levels), plans)
        candidates.append(candidate)
    reference = _reference_work(overrides, image_hw, n_channels, len(targets), alpha, levels, n_models, seed)
    work_budget = DEFAULT_WORK_BUDGET * reference
    spent_work, started, rate = 0.0, time.perf_counter(), None
    for position, candidate in enumerate(candidates):
        if position > 0:
            if fit_budget is None and spent_work + candidate.work > work_budget:
                candidate.skipped = (f"estimated work {candidate.work / reference:.2f}x the paper bag's would exceed "
                                     f"the default budget of {DEFAULT_WORK_BUDGET:g}x")
                continue
            if fit_budget is not None:
                predicted = candidate.work * rate
                elapsed = time.perf_counter() - started
                if elapsed + predicted > fit_budget:
                    candidate.skipped = (f"predicted {predicted:.1f} s would exceed --fit-budget {fit_budget:g} s "
                                         f"({elapsed:.1f} s spent)")
                    continue
        fit_candidate(candidate, images, targets, aux, alpha=alpha, n_models=n_models, seed=seed, progress=progress)
        spent_work += candidate.work
        rate = (time.perf_counter() - started) / spent_work
        log(f"regressor {candidate.name}: held-out pinball loss at alpha {candidate.validation_loss:.5f} "
            f"({candidate.seconds:.1f} s)")
    fitted = [c for c in candidates if c.bag is not None]
    best = fitted[0]
    for candidate in fitted[1:]:
        candidate.comparison = compare(candidate, best)
        gain = -candidate.comparison["difference"]
        if np.isfinite(gain) and gain > SWITCH_STANDARD_ERRORS * candidate.comparison["standard_error"]:
            best = candidate
    for candidate in fitted:
        if candidate is not best:
            candidate.bag = None  # free the losers' networks
    record = {"requested": regressor, "chosen": best.name,
              "criterion": "mean pinball loss at alpha of each member on its own held-out public training images "
                           "(never the calibration part, the members or the holdout); a later candidate replaces the "
                           f"choice only if it is lower by more than {SWITCH_STANDARD_ERRORS:g} standard errors of the "
                           "image-by-image difference",
              "budget": ({"kind": "work", "times_paper_bag": DEFAULT_WORK_BUDGET} if fit_budget is None
                         else {"kind": "seconds", "seconds": fit_budget}),
              "candidates": [c.summary() for c in candidates], "chosen_settings": best.config.to_dict()}
    return best, record


def _reference_work(overrides, image_hw, n_channels, n, alpha, levels, n_models, seed) -> float:
    """The paper bag's work plus its single regressor's on n images, with the same explicit options: the budget's unit."""
    config = named_config("paper", overrides, image_hw)
    seeds = [derive_seed(seed, 0, j) for j in range(n_models)]
    n_val = max(1, int(config.holdout_frac * n))
    single = [SamplePlan(np.arange(n - n_val), np.arange(n_val))]
    k = len(fitted_levels(config, alpha, levels))
    return (training_work(config, image_hw, n_channels, k, bootstrap_plans(n, seeds, config.holdout_frac))
            + training_work(config, image_hw, n_channels, k, single))
