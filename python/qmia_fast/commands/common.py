"""Options shared by the CLI commands (model, data, scoring, attack), the --config file that can set them, and their specs."""
from __future__ import annotations

from typing import Any, Callable

import click

from ..config_file import read_config_file
from ..errors import ConfigError
from ..pipeline.specs import (
    DATA_FORMATS, LAYOUTS, MODEL_FORMATS, PARTS, AttackSpec, DataSpec, ModelSpec, ScoreSpec,
)
from ..precision import DEFAULT_PRECISION, PRECISIONS
from ..regress import RegressorConfig
from ..regress.calibration import CALIBRATION_METHODS as CALIBRATIONS
from ..regress.selection import REGRESSOR_CHOICES as REGRESSORS
from ..scoring import CONDITION_MODES, METHODS, score_defaults
from ..seeds import SEED_LIMIT

_SCORE = score_defaults()


def _compose(*decorators: Callable) -> Callable:
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def echo_err(text: str) -> None:
    click.echo(text, err=True)


def model_options(func):
    return _compose(
        click.option("--model", default="builtin", show_default=True,
                     help="Target model: 'builtin' (the shipped demo DDPM), a checkpoint file or a model folder."),
        click.option("--model-format", default="auto", show_default=True, type=click.Choice(list(MODEL_FORMATS)),
                     help="Checkpoint format; auto detects it from the file."),
        click.option("--model-config", default=None,
                     help="Architecture/schedule for formats that do not carry it: an absl flagfile "
                          "(pytorch-ddpm/SecMI config/CIFAR10.txt), a scheduler_config.json or a JSON file."),
        click.option("--trust-checkpoint", is_flag=True, default=False,
                     help="Allow checkpoints that need unpickling of arbitrary objects (runs code from the file)."),
        click.option("--lora", default=None,
                     help="A LoRA weights file (diffusers' / PEFT's safetensors, e.g. pytorch_lora_weights.safetensors) "
                          "merged into the model's denoiser before scoring."),
    )(func)


def data_options(func):
    return _compose(
        click.option("--data", default="builtin", show_default=True,
                     help="Images: 'builtin' (demo), .npy/.npz array, image folder, MNIST idx file/folder, "
                          "or CIFAR-10/100 python batches folder."),
        click.option("--data-format", default="auto", show_default=True, type=click.Choice(list(DATA_FORMATS)),
                     help="Reader for --data; auto detects it."),
        click.option("--layout", default="auto", show_default=True, type=click.Choice(list(LAYOUTS)),
                     help="Axis order of array data; auto decides by which axis holds 1 or 3 channels."),
        click.option("--part", default=None, type=click.Choice(list(PARTS)),
                     help="For idx and CIFAR folders: which part to read (default train; all = train then test)."),
        click.option("--split", "split_path", default=None,
                     help="Split file: SecMI/PIA's (mia_train_idxs/mia_eval_idxs) or ours (members/public/holdout)."),
        click.option("--members", default=None,
                     help="Instead of --split: file of member indices (.npy/.txt/.json); the rest are non-members."),
        click.option("--public-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True,
                     max_open=True), help="Share of non-members used as the attacker's public set (rest: holdout)."),
        click.option("--labels", default=None,
                     help="Class labels for a class-conditional model: one integer per image (.npy/.txt/.json/.csv "
                          "in index order, or for an image folder a file name -> label table) [default: the data's "
                          "own: idx label files, CIFAR labels, an npz 'labels' array, class sub-folders]."),
        click.option("--captions", default=None,
                     help="Captions for a text-to-image model: a .jsonl/.csv keyed by file_name or index [default: "
                          "the image folder's metadata.jsonl or metadata.csv]."),
        click.option("--caption-column", default=None,
                     help="The captions' text column [default: text]."),
        click.option("--resolution", default=None, type=click.IntRange(min=1),
                     help="Image folders: resize (shorter side, bilinear) and centre-crop to this side, as diffusers' "
                          "training scripts do [default: a latent or text-to-image model's training resolution; "
                          "none for pixel models]."),
    )(func)


def scoring_options(func):
    return _compose(
        click.option("--method", default=None, type=click.Choice(list(METHODS)),
                     help=f"Score: secmi (SecMI t-error), loss (noise-prediction error) or pia (PIA) "
                          f"[default: {_SCORE['method']}, or the score the model folder recommends]."),
        click.option("--t-sec", default=None, type=click.IntRange(min=1),
                     help=f"secmi: timestep of the t-error, a multiple of --k [default: {_SCORE['t_sec']}]."),
        click.option("--k", default=None, type=click.IntRange(min=1),
                     help=f"secmi: DDIM step size in timesteps [default: {_SCORE['k']}]."),
        click.option("--t", "t", default=None, type=click.IntRange(min=0),
                     help=f"loss and pia: timestep [default: {_SCORE['t']}]."),
        click.option("--p", "p", default=None, type=float,
                     help=f"pia: exponent of the error norm [default: {_SCORE['p']:g}]."),
        click.option("--n-draws", default=None, type=click.IntRange(min=1),
                     help=f"loss: noise draws averaged per image [default: {_SCORE['n_draws']}]."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SEED_LIMIT - 1),
                     help="Seed of the noise (and of splits and regressors in attack)."),
        click.option("--batch-size", default=None, type=click.IntRange(min=1),
                     help="Images per scoring step, rounded up to a multiple of --unet-batch [default: one "
                          "micro-batch]. Does not change the scores."),
        click.option("--unet-batch", default=None, type=click.IntRange(min=1),
                     help="Images per UNet call [default: 64 on CPU, 256 on CUDA, fewer where the model's "
                          "activations would not fit memory]. Scores are bit-identical for one value at any "
                          "--batch-size, thread count or torchrun sharding."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto."),
        click.option("--threads", default=None, type=click.IntRange(min=1),
                     help="torch threads for scoring and fitting [default: torch's]."),
        click.option("--precision", default=DEFAULT_PRECISION, show_default=True, type=click.Choice(list(PRECISIONS)),
                     help="UNet precision. fp32 is strict; tf32, bf16, fp16; mixed / mixed-tf32 (secmi only): "
                          "bf16 inversion, fp32 / TF32 round trip. auto: fp16 on CUDA; on a CPU the fastest "
                          "variant measured once on this machine for this model (fp32, or where bf16 hardware wins: "
                          "mixed for secmi, bf16 otherwise), cached, so reruns give the same bits."),
        click.option("--condition", default="own", show_default=True, type=click.Choice(list(CONDITION_MODES)),
                     help="Conditional models: score each image under its own condition (class label or "
                          "caption), or every image under the null condition (null class / empty prompt)."),
        click.option("--fused", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"]),
                     help="Fused GroupNorm(+add, +SiLU) kernels in the built-in UNet; auto: on for CPU, off for "
                          "CUDA until validated on a GPU."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bars on stderr."),
    )(func)


def attack_options(func):
    cfg = RegressorConfig
    return _compose(
        click.option("--alpha", default=0.01, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Target false-positive rate of the per-image quantile thresholds."),
        click.option("--n-models", default=7, show_default=True, type=click.IntRange(min=1),
                     help="Regressors in the bag (member iff more than half vote member)."),
        click.option("--reg-epochs", default=None, type=click.IntRange(min=1),
                     help=f"Regressor training epochs (upper bound; early stopping), for every --regressor setting "
                          f"[default: {cfg.epochs}]."),
        click.option("--reg-width", default=None, type=click.IntRange(min=1),
                     help=f"Regressor width, for every --regressor setting [default: {cfg.width}; 32 in full-wide]."),
        click.option("--reg-depth", default=None, type=click.IntRange(min=1, max=6),
                     help=f"Regressor depth, for every --regressor setting [default: {cfg.depth}]."),
        click.option("--calibration", default="conformal", show_default=True, type=click.Choice(list(CALIBRATIONS)),
                     help="conformal: hold out part of the public set and shift the thresholds so that a "
                          "non-member drawn like the public set is called a member with probability at most "
                          "alpha (split conformal); none: the paper's raw rule (FPR only about alpha)."),
        click.option("--regressor", default="auto", show_default=True, type=click.Choice(list(REGRESSORS)),
                     help="auto: the setting (ensemble, head, width, stem) with the lowest pinball loss at alpha "
                          "on held-out public images, within --fit-budget; paper: the method paper's bootstrap bag; "
                          "full*: members on the whole public set. --reg-* options override any of them."),
        click.option("--fit-budget", default=None, type=click.FloatRange(min=0, min_open=True),
                     help="Seconds that auto may spend trying regressor settings [default: twice the paper bag's "
                          "estimated work, which makes the choice the same on every machine]."),
        click.option("--max-per-set", default=None, type=click.IntRange(min=10),
                     help="Use at most this many images of each set (members, public, holdout), seeded; "
                          "for quick looks."),
    )(func)


def resumable_options(overwrite_help: str):
    """--chunk-size and --overwrite of the commands that score resumably; what --overwrite replaces is theirs to say."""
    return _compose(
        click.option("--chunk-size", default=None, type=click.IntRange(min=1),
                     help="Images per resumable chunk [default: about 1024]."),
        click.option("--overwrite", is_flag=True, default=False, help=overwrite_help),
    )


# --- options -> specs -------------------------------------------------------------------------

def model_spec(options: dict) -> ModelSpec:
    return ModelSpec(path=options.pop("model"), format=options.pop("model_format"),
                     config=options.pop("model_config"), trust_checkpoint=options.pop("trust_checkpoint"),
                     lora=options.pop("lora"))


def data_spec(options: dict) -> DataSpec:
    return DataSpec(path=options.pop("data"), format=options.pop("data_format"), layout=options.pop("layout"),
                    part=options.pop("part"), split=options.pop("split_path"), members=options.pop("members"),
                    public_fraction=options.pop("public_fraction"), labels=options.pop("labels"),
                    captions=options.pop("captions"), caption_column=options.pop("caption_column"),
                    resolution=options.pop("resolution"))


def score_spec(options: dict) -> ScoreSpec:
    names = ("method", "t_sec", "k", "t", "p", "n_draws", "precision", "batch_size", "unet_batch", "device",
             "threads", "condition")
    fused = {"auto": None, "on": True, "off": False}[options.pop("fused")]
    return ScoreSpec(**{name: options.pop(name) for name in names}, fused=fused)


def attack_spec(options: dict) -> AttackSpec:
    names = ("alpha", "n_models", "reg_epochs", "reg_width", "reg_depth", "max_per_set", "calibration", "regressor",
             "fit_budget")
    return AttackSpec(**{name: options.pop(name) for name in names})


# --- --config FILE ----------------------------------------------------------------------------

def _config_value(param: click.Parameter, key: str, value: Any, path: str) -> Any:
    """A value from the config file for one option: a scalar of the option's own type, or a one-line error.

    Nothing is coerced across kinds: true is not 1, 10.7 is not 10, "yes" is not a flag.
    """
    scalar = (str, int, float, bool)
    if value is None:
        return None
    if not isinstance(value, scalar):
        raise ConfigError(f"--config {path}: {key} is a {type(value).__name__}; give a single "
                          f"{'true/false' if getattr(param, 'is_flag', False) else 'value'}")
    if getattr(param, "is_flag", False) and not isinstance(value, bool):
        raise ConfigError(f"--config {path}: {key} = {value!r} must be true or false")
    kind = getattr(param.type, "name", "")
    if not getattr(param, "is_flag", False) and isinstance(value, bool):
        raise ConfigError(f"--config {path}: {key} = {value!r} is a true/false value; give a "
                          f"{kind or 'value'} (in YAML, quote words such as \"on\" or \"off\")")
    if isinstance(param.type, (click.types.IntParamType, click.IntRange)) and isinstance(value, float):
        raise ConfigError(f"--config {path}: {key} = {value!r} must be a whole number")
    try:
        return param.type_cast_value(click.Context(click.Command(key)), value)
    except click.BadParameter as exc:
        raise ConfigError(f"--config {path}: {key} = {value!r}: {exc.format_message()}") from None


def config_option(func):
    """--config FILE: option defaults from YAML/JSON; anything given on the command line wins."""

    def load(ctx: click.Context, param: click.Parameter, value: str | None):
        if not value:
            return value
        values = read_config_file(value)
        known = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
        # CLI spellings that differ from the parameter names they set.
        aliases = {"split": "split_path", "out": "out_dir" if "out_dir" in known else "out_path"}
        defaults = {}
        for key, item in values.items():
            name = aliases.get(key, key) if aliases.get(key, key) in known else key
            if name not in known:
                raise ConfigError(
                    f"--config {value}: unknown option {key!r}; use the long option names of "
                    f"`qmia-fast {ctx.info_name} --help` (e.g. {', '.join(sorted(known)[:4])})"
                )
            defaults[name] = _config_value(known[name], key, item, value)
        ctx.default_map = {**(ctx.default_map or {}), **defaults}
        return value

    return click.option("--config", "config", default=None, is_eager=True, expose_value=True, callback=load,
                        help="YAML or JSON file of option values (keys as the long option names); "
                             "options on the command line override it.")(func)
