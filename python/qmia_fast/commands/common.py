"""Options shared by the CLI commands (model, data, scoring) and the --config file that can set them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import ConfigError, DataError
from ..precision import PRECISIONS
from ..scoring import METHODS


def _compose(*decorators: Callable) -> Callable:
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def model_options(func):
    return _compose(
        click.option("--model", default="builtin", show_default=True,
                     help="Target model: 'builtin' (the shipped demo DDPM), a checkpoint file or a model folder."),
        click.option("--model-format", default="auto", show_default=True,
                     type=click.Choice(["auto", "qmia", "pytorch-ddpm", "diffusers", "torchscript"]),
                     help="Checkpoint format; auto detects it from the file."),
        click.option("--model-config", default=None,
                     help="Architecture/schedule for formats that do not carry it: an absl flagfile "
                          "(pytorch-ddpm/SecMI config/CIFAR10.txt), a scheduler_config.json or a JSON file."),
        click.option("--trust-checkpoint", is_flag=True, default=False,
                     help="Allow checkpoints that need unpickling of arbitrary objects (runs code from the file)."),
    )(func)


def data_options(func):
    return _compose(
        click.option("--data", default="builtin", show_default=True,
                     help="Images: 'builtin' (demo), .npy/.npz array, image folder, MNIST idx file/folder, "
                          "or CIFAR-10/100 python batches folder."),
        click.option("--data-format", default="auto", show_default=True,
                     type=click.Choice(["auto", "npy", "npz", "idx", "cifar", "images"]),
                     help="Reader for --data; auto detects it."),
        click.option("--layout", default="auto", show_default=True,
                     type=click.Choice(["auto", "nchw", "nhwc", "nhw"]),
                     help="Axis order of array data; auto decides by which axis holds 1 or 3 channels."),
        click.option("--part", default=None, type=click.Choice(["train", "test", "all"]),
                     help="For idx and CIFAR folders: which part to read (default train; all = train then test)."),
        click.option("--split", "split_path", default=None,
                     help="Split file: SecMI/PIA's (mia_train_idxs/mia_eval_idxs) or ours (members/public/holdout)."),
        click.option("--members", default=None,
                     help="Instead of --split: file of member indices (.npy/.txt/.json); the rest are non-members."),
        click.option("--public-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True,
                     max_open=True), help="Share of non-members used as the attacker's public set (rest: holdout)."),
    )(func)


SCORE_DEFAULTS = {"method": "secmi", "t_sec": 100, "k": 10, "t": 200, "p": 4.0, "n_draws": 1}


def scoring_options(func):
    return _compose(
        click.option("--method", default=None, type=click.Choice(list(METHODS)),
                     help="Score: secmi (SecMI t-error), loss (noise-prediction error) or pia (PIA) "
                          "[default: secmi, or the score the model folder recommends]."),
        click.option("--t-sec", default=None, type=int,
                     help="secmi: timestep of the t-error, a multiple of --k [default: 100]."),
        click.option("--k", default=None, type=int, help="secmi: DDIM step size in timesteps [default: 10]."),
        click.option("--t", "t", default=None, type=int, help="loss and pia: timestep [default: 200]."),
        click.option("--p", "p", default=None, type=float, help="pia: exponent of the error norm [default: 4]."),
        click.option("--n-draws", default=None, type=int,
                     help="loss: noise draws averaged per image [default: 1]."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seed of the noise (and of splits and regressors in attack)."),
        click.option("--batch-size", default=None, type=int,
                     help="Images per batch [default: 64 on CPU, 256 on CUDA]."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto."),
        click.option("--precision", default="auto", show_default=True, type=click.Choice(list(PRECISIONS)),
                     help="UNet precision. mixed (secmi only): bf16 inversion, fp32 round trip. auto picks "
                          "the fastest whose attack results match fp32: where bf16 is fast (GPUs, AMX CPUs) "
                          "mixed for secmi and bf16 for loss/pia, else fp32."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bars on stderr."),
    )(func)


def resolve_score_options(target, given: dict) -> tuple[dict, str | None]:
    """Score settings: the command line first, then the model folder's recommendation, then the defaults.

    A model folder may record, under metadata.recommended_score, the score that shows its
    membership signal (the shipped demo target does; see its model card). Only options
    the user did not give are taken from it.
    """
    metadata = (getattr(target, "config", None) or {}).get("metadata") or {}
    recommended = metadata.get("recommended_score") or {}
    if not isinstance(recommended, dict):
        recommended = {}
    resolved, taken = {}, []
    for name, default in SCORE_DEFAULTS.items():
        if given.get(name) is not None:
            resolved[name] = given[name]
        elif name in recommended and (given.get("method") in (None, recommended.get("method"))):
            resolved[name] = type(default)(recommended[name])
            taken.append(f"{name}={recommended[name]}")
        else:
            resolved[name] = default
    note = None
    if taken:
        why = recommended.get("why", "")
        note = f"using the model's recommended score settings ({', '.join(taken)})" + (f": {why}" if why else "")
    return resolved, note


def load_model_from_options(model: str, model_format: str, model_config: str | None, trust_checkpoint: bool):
    from ..models import load_model

    return load_model(model, format=model_format, config=model_config, trust_checkpoint=trust_checkpoint)


def load_data_from_options(data: str, data_format: str, layout: str, part: str | None, split_path: str | None,
                           members: str | None, public_fraction: float, seed: int):
    from ..data import load_data

    if split_path and members:
        raise ConfigError("--split and --members both given; pass one of them")
    return load_data(data, split=split_path, members=members, public_fraction=public_fraction, seed=seed,
                     layout=layout, fmt=data_format, part=part)


def check_seed(seed: int) -> int:
    if seed < 0 or seed >= 2**63:
        raise ConfigError(f"--seed = {seed} must be in [0, 2**63); pass a non-negative seed")
    return seed


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a YAML or JSON file; keys mirror the long option names (dashes or underscores)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file; check the path")
    text = file.read_text(encoding="utf-8", errors="replace")
    if file.suffix.lower() in (".yaml", ".yml"):
        from ..errors import require_extra

        yaml = require_extra("yaml", "yaml", "a YAML --config file")
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid JSON ({exc}); use a .yaml name for YAML") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def config_option(func):
    """--config FILE: option defaults from YAML/JSON; anything given on the command line wins."""

    def load(ctx: click.Context, param: click.Parameter, value: str | None):
        if not value:
            return value
        values = read_config_file(value)
        known = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
        # CLI spellings that differ from the parameter names they set.
        aliases = {"split": "split_path", "out": "out_dir"}
        defaults = {}
        for key, item in values.items():
            name = aliases.get(key, key) if aliases.get(key, key) in known else key
            if name not in known:
                raise ConfigError(
                    f"--config {value}: unknown option {key!r}; use the long option names of "
                    f"`qmia-fast {ctx.info_name} --help` (e.g. {', '.join(sorted(known)[:4])})"
                )
            defaults[name] = item
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
        return value

    return click.option("--config", "config", default=None, is_eager=True, expose_value=True, callback=load,
                        help="YAML or JSON file of option values (keys as the long option names); "
                             "options on the command line override it.")(func)


def fail_if_missing(path: str | None, option: str) -> None:
    if path and path != "builtin" and not Path(path).exists():
        raise DataError(f"{option} {path}: no such file or folder; check the path")
