"""The audit as data: what model and images to load, how to score them, how to attack, where to write."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..precision import PRECISIONS
from ..scoring import METHODS, SCORE_SETTINGS, score_defaults
from ..seeds import check_seed

MODEL_FORMATS = ("auto", "qmia", "pytorch-ddpm", "diffusers", "torchscript")
DATA_FORMATS = ("auto", "npy", "npz", "idx", "cifar", "images")
LAYOUTS = ("auto", "nchw", "nhwc", "nhw")
PARTS = ("train", "test", "all")
SUBSETS = ("all", "members", "public", "holdout", "nonmembers")
DEFAULT_AUDIT_OUT = "qmia-out"


@dataclass(frozen=True)
class ModelSpec:
    """The target model: 'builtin' (the shipped demo DDPM), a checkpoint file or a model folder."""

    path: str = "builtin"
    format: str = "auto"
    config: str | None = None
    trust_checkpoint: bool = False

    def __post_init__(self):
        _choice(self.format, MODEL_FORMATS, "model_format")

    def load(self):
        from ..models import load_model

        return load_model(self.path, format=self.format, config=self.config, trust_checkpoint=self.trust_checkpoint)


@dataclass(frozen=True)
class DataSpec:
    """The images and who is a member: a data source plus a split file, a member list, or a split inside the data."""

    path: str = "builtin"
    format: str = "auto"
    layout: str = "auto"
    part: str | None = None
    split: str | None = None
    members: str | None = None
    public_fraction: float = 0.5

    def __post_init__(self):
        _choice(self.format, DATA_FORMATS, "data_format")
        _choice(self.layout, LAYOUTS, "layout")
        if self.part is not None:
            _choice(self.part, PARTS, "part")
        if self.split and self.members:
            raise ConfigError("--split and --members were both given; pass only one of them")
        _fraction(self.public_fraction, "public_fraction")

    def load(self, seed: int, expected_shape=None):
        from ..data import load_data

        return load_data(self.path, split=self.split, members=self.members, public_fraction=self.public_fraction,
                         seed=seed, layout=self.layout, fmt=self.format, part=self.part,
                         expected_shape=None if expected_shape is None else tuple(expected_shape))


@dataclass(frozen=True)
class ScoreSpec:
    """How to score: settings left None come from the model folder's recommendation, then ScoreConfig's defaults."""

    method: str | None = None
    t_sec: int | None = None
    k: int | None = None
    t: int | None = None
    p: float | None = None
    n_draws: int | None = None
    precision: str = "auto"
    batch_size: int | None = None
    unet_batch: int | None = None
    device: str = "auto"
    threads: int | None = None
    fast_layers: bool | None = None  # CPU fp32 Winograd/GroupNorm layers; None: where measured faster
    fused: bool | None = None  # fused GroupNorm(+add, +SiLU) in the project UNet; None: the device decides

    def __post_init__(self):
        if self.method is not None:
            _choice(self.method, METHODS, "method")
        _choice(self.precision, PRECISIONS, "precision")
        for name in ("t_sec", "k", "t", "n_draws", "batch_size", "unet_batch", "threads"):
            _optional_int(getattr(self, name), name, minimum=0 if name == "t" else 1)
        if self.p is not None and (not isinstance(self.p, numbers.Real) or isinstance(self.p, bool)
                                   or not math.isfinite(float(self.p))):
            raise ConfigError(f"p = {self.p!r} must be a finite number")

    def given(self) -> dict[str, Any]:
        """The score settings the user chose (None: not chosen)."""
        return {name: getattr(self, name) for name in SCORE_SETTINGS}

    def resolve(self, target) -> tuple[dict[str, Any], str | None]:
        """Score settings: the user's first, then the model folder's recommendation, then the defaults.

        A model folder may record, under metadata.recommended_score, the score that shows its
        membership signal (the shipped demo target does; see its model card). Only settings
        the user did not give are taken from it, and only when the user named no other method.
        Returns (settings, a note saying what was taken, or None).
        """
        metadata = (getattr(target, "config", None) or {}).get("metadata") or {}
        recommended = metadata.get("recommended_score") or {}
        if not isinstance(recommended, dict):
            recommended = {}
        given = self.given()
        resolved, taken = {}, []
        for name, default in score_defaults().items():
            if given[name] is not None:
                resolved[name] = given[name]
            elif name in recommended and given["method"] in (None, recommended.get("method")):
                try:
                    resolved[name] = type(default)(recommended[name])
                except (TypeError, ValueError):
                    raise ConfigError(f"the model's recommended_score has {name} = {recommended[name]!r}, "
                                      f"not a {type(default).__name__}; fix its config.json") from None
                taken.append(f"{name}={recommended[name]}")
            else:
                resolved[name] = default
        note = None
        if taken:
            why = recommended.get("why", "")
            note = f"using the model's recommended score settings ({', '.join(taken)})" + (f": {why}" if why else "")
        return resolved, note

    def scorer(self, target, settings: dict[str, Any], seed: int, device=None):
        """A Scorer for `target` with resolved `settings` (from resolve) on `device` (default: this spec's)."""
        from ..scoring import Scorer

        return Scorer(target, settings["method"], t_sec=settings["t_sec"], k=settings["k"], t=settings["t"],
                      p=settings["p"], n_draws=settings["n_draws"], seed=seed, batch_size=self.batch_size,
                      unet_batch=self.unet_batch, device=device or self.device, precision=self.precision,
                      threads=self.threads, fast_layers=self.fast_layers, fused=self.fused)


@dataclass(frozen=True)
class AttackSpec:
    """The quantile attack: decision level alpha, bag size, calibration, regressor choice and settings (None: the chosen's)."""

    alpha: float = 0.01
    n_models: int = 7
    reg_epochs: int | None = None
    reg_width: int | None = None
    reg_depth: int | None = None
    max_per_set: int | None = None
    calibration: str = "conformal"   # conformal: FPR <= alpha guaranteed (split conformal); none: the raw rule
    regressor: str = "auto"          # auto: chosen on held-out public data; or a named setting
    fit_budget: float | None = None  # seconds for the selection; None: twice the paper bag's estimated work

    def __post_init__(self):
        from ..regress.calibration import CALIBRATION_METHODS
        from ..regress.selection import REGRESSOR_CHOICES, check_budget

        _fraction(self.alpha, "alpha")
        _choice(self.calibration, CALIBRATION_METHODS, "calibration")
        _choice(self.regressor, REGRESSOR_CHOICES, "regressor")
        check_budget(self.fit_budget)
        _optional_int(self.n_models, "n_models", minimum=1)
        _optional_int(self.reg_epochs, "reg_epochs", minimum=1)
        _optional_int(self.reg_width, "reg_width", minimum=1)
        _optional_int(self.reg_depth, "reg_depth", minimum=1)
        _optional_int(self.max_per_set, "max_per_set", minimum=10)

    def attack_options(self) -> dict[str, Any]:
        """Keyword arguments of QuantileAttack besides alpha, n_models and seed."""
        return {"calibration": self.calibration, "regressor": self.regressor, "fit_budget": self.fit_budget,
                **self.regressor_options()}

    def regressor_options(self) -> dict[str, int]:
        names = {"reg_epochs": "epochs", "reg_width": "width", "reg_depth": "depth"}
        return {option: getattr(self, name) for name, option in names.items() if getattr(self, name) is not None}


@dataclass(frozen=True)
class AuditSpec:
    """A whole audit: score members, public and holdout; fit the bag on the public set; report on the holdout.

    out=None runs in memory (nothing written, nothing resumed); otherwise `out` is a folder
    that receives report.json, scores.npz, attack.pt and the plots, and holds the resumable
    score chunks while scoring. A finished audit in `out` is replaced only with overwrite=True.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    score: ScoreSpec = field(default_factory=ScoreSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    seed: int = 0
    out: str | None = DEFAULT_AUDIT_OUT
    chunk_size: int | None = None
    overwrite: bool = False
    progress: bool = False
    plots: bool = True
    config_file: str | None = None

    def __post_init__(self):
        check_seed(self.seed)
        _optional_int(self.chunk_size, "chunk_size", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoreJob:
    """Score one subset of a data set and write the scores (with their direction and settings) to `out`."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    score: ScoreSpec = field(default_factory=ScoreSpec)
    out: str = "scores.npz"
    subset: str = "all"
    seed: int = 0
    work_dir: str | None = None
    keep_chunks: bool = False
    chunk_size: int | None = None
    overwrite: bool = False
    progress: bool = False
    config_file: str | None = None

    def __post_init__(self):
        check_seed(self.seed)
        _choice(self.subset, SUBSETS, "subset")
        _optional_int(self.chunk_size, "chunk_size", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _choice(value, allowed, name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r} is not one of {', '.join(allowed)}")


def _optional_int(value, name: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{name} = {value!r} must be an integer >= {minimum}")


def _fraction(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name} = {value!r} must be a number strictly between 0 and 1")
