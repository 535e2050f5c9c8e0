"""The audit as data: what model and images to load, how to score them, how to attack, where to write."""
from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..data.layout import LAYOUTS
from ..data.loader import FORMATS as DATA_FORMATS
from ..data.loader import PARTS
from ..errors import ConfigError
from ..models.loader import FORMATS as MODEL_FORMATS
from ..precision import DEFAULT_PRECISION, PRECISIONS
from ..scoring import CONDITION_MODES, METHOD_SETTINGS, METHODS, SCORE_SETTINGS, score_defaults
from ..seeds import check_seed

SUBSETS = ("all", "members", "public", "holdout", "nonmembers")
DEFAULT_AUDIT_OUT = "qmia-out"


@dataclass(frozen=True)
class ModelSpec:
    """The target model: 'builtin' (the shipped demo DDPM), a checkpoint file or a model folder."""

    path: str = "builtin"
    format: str = "auto"
    config: str | None = None
    trust_checkpoint: bool = False
    lora: str | None = None  # a LoRA weights file merged into the denoiser before scoring

    def __post_init__(self):
        _path(self.path, "model")
        _choice(self.format, MODEL_FORMATS, "model_format")
        _path(self.config, "model_config", optional=True)
        _flag(self.trust_checkpoint, "trust_checkpoint")
        _path(self.lora, "lora", optional=True)

    def load(self):
        from ..models import load_model

        return load_model(self.path, format=self.format, config=self.config, trust_checkpoint=self.trust_checkpoint,
                          lora=self.lora)


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
    labels: str | None = None           # class labels per image (conditional models), overriding the data's own
    captions: str | None = None         # captions per image (text-to-image), overriding a folder's metadata file
    caption_column: str | None = None   # the metadata's text column (default: text)
    resolution: int | None = None       # image folders: resize + centre crop to this side (default: the model's)

    def __post_init__(self):
        _path(self.path, "data")
        _path(self.split, "split", optional=True)
        _path(self.members, "members", optional=True)
        _path(self.labels, "labels", optional=True)
        _path(self.captions, "captions", optional=True)
        _choice(self.format, DATA_FORMATS, "data_format")
        _optional_int(self.resolution, "resolution", minimum=1)
        _choice(self.layout, LAYOUTS, "layout")
        if self.part is not None:
            _choice(self.part, PARTS, "part")
        if self.split and self.members:
            raise ConfigError("--split and --members were both given; pass only one of them")
        _fraction(self.public_fraction, "public_fraction")

    def load(self, seed: int, expected_shape=None, resolution: int | None = None):
        """The images (checked against expected_shape), split and conditions; `resolution` is the model's default
        for resizing an image folder when this spec gives none."""
        from ..data import load_data

        return load_data(self.path, split=self.split, members=self.members, public_fraction=self.public_fraction,
                         seed=seed, layout=self.layout, fmt=self.format, part=self.part,
                         expected_shape=None if expected_shape is None else tuple(expected_shape),
                         labels=self.labels, captions=self.captions, caption_column=self.caption_column,
                         resolution=self.resolution, model_resolution=resolution)


@dataclass(frozen=True)
class ScoreSpec:
    """How to score: settings left None come from the model folder's recommendation, then ScoreConfig's defaults."""

    method: str | None = None
    t_sec: int | None = None
    k: int | None = None
    t: int | None = None
    p: float | None = None
    n_draws: int | None = None
    precision: str = DEFAULT_PRECISION
    batch_size: int | None = None
    unet_batch: int | None = None
    device: str = "auto"
    threads: int | None = None
    fast_layers: bool | None = None  # CPU fp32 Winograd/GroupNorm layers; None: where measured faster
    fused: bool | None = None  # fused GroupNorm(+add, +SiLU) in the project UNet; None: the device decides
    condition: str = "own"  # conditional models: each image's own condition, or the null one for every image

    def __post_init__(self):
        if self.method is not None:
            _choice(self.method, METHODS, "method")
        _choice(self.precision, PRECISIONS, "precision")
        _choice(self.condition, CONDITION_MODES, "condition")
        for name in ("t_sec", "k", "t", "n_draws", "batch_size", "unet_batch", "threads"):
            _optional_int(getattr(self, name), name, minimum=0 if name == "t" else 1)
        if self.p is not None and (not isinstance(self.p, numbers.Real) or isinstance(self.p, bool)
                                   or not math.isfinite(float(self.p))):
            raise ConfigError(f"p = {self.p!r} must be a finite number")
        if not isinstance(self.device, str):
            raise ConfigError(f"device = {self.device!r} must be a string such as 'cpu', 'cuda', 'cuda:1' or 'auto'")
        for name in ("fast_layers", "fused"):
            if getattr(self, name) is not None:
                _flag(getattr(self, name), name)

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
        # A setting the chosen method does not read would be silently ignored: say so (it changes nothing).
        reads = METHOD_SETTINGS.get(resolved["method"], ())
        unused = [f"{name} = {given[name]}" for name in SCORE_SETTINGS
                  if name != "method" and given[name] is not None and name not in reads]
        if unused:
            verb = "does" if len(unused) == 1 else "do"
            warnings.warn(f"{', '.join(unused)} {verb} not apply to method {resolved['method']} (it reads "
                          f"{', '.join(reads)}); ignored", UserWarning, stacklevel=2)
        note = None
        if taken:
            why = recommended.get("why", "")
            note = f"using the model's recommended score settings ({', '.join(taken)})" + (f": {why}" if why else "")
        return resolved, note

    def plan(self, target, settings: dict[str, Any], device=None, log=None):
        """The run plan for `target` with resolved score `settings` on `device` (default: this spec's)."""
        from ..plan import resolve_plan
        from ..scoring import ScoreConfig

        calls = ScoreConfig(**{name: settings[name] for name in SCORE_SETTINGS}).unet_calls
        return resolve_plan(target, settings["method"], device=device or self.device, precision=self.precision,
                            unet_batch=self.unet_batch, batch_size=self.batch_size, threads=self.threads,
                            fast_layers=self.fast_layers, fused=self.fused, calls_per_image=calls, log=log)

    def scorer(self, target, settings: dict[str, Any], seed: int, plan):
        """A Scorer for `target` with resolved `settings` (from resolve), run as `plan` says."""
        from ..scoring import Scorer

        return Scorer(target, settings["method"], t_sec=settings["t_sec"], k=settings["k"], t=settings["t"],
                      p=settings["p"], n_draws=settings["n_draws"], seed=seed, condition=self.condition, plan=plan)


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
        _parts(self, model=ModelSpec, data=DataSpec, score=ScoreSpec, attack=AttackSpec)
        check_seed(self.seed)
        _path(self.out, "out", optional=True)
        _path(self.config_file, "config_file", optional=True)
        _optional_int(self.chunk_size, "chunk_size", minimum=1)
        for name in ("overwrite", "progress", "plots"):
            _flag(getattr(self, name), name)

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
        _parts(self, model=ModelSpec, data=DataSpec, score=ScoreSpec)
        check_seed(self.seed)
        _path(self.out, "out")
        _path(self.work_dir, "work_dir", optional=True)
        _path(self.config_file, "config_file", optional=True)
        _choice(self.subset, SUBSETS, "subset")
        _optional_int(self.chunk_size, "chunk_size", minimum=1)
        for name in ("keep_chunks", "overwrite", "progress"):
            _flag(getattr(self, name), name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _path(value, name: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise ConfigError(f"{name} = {value!r:.60} must be a path (a string or os.PathLike)"
                          + (" or None" if optional else ""))


def _flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} = {value!r:.60} must be True or False")


def _parts(spec, **kinds) -> None:
    for name, kind in kinds.items():
        if not isinstance(getattr(spec, name), kind):
            raise ConfigError(f"{name} = {getattr(spec, name)!r:.60} must be a {kind.__name__}; build it with "
                              f"qmia_fast.{kind.__name__}(...)")


def _choice(value, allowed, name: str) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name} = {value!r} is not one of {', '.join(allowed)}")


def _optional_int(value, name: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ConfigError(f"{name} = {value!r} must be an integer >= {minimum}")


def _fraction(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name} = {value!r} must be a number strictly between 0 and 1")
