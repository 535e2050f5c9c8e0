"""Read the absl flagfiles that pytorch-ddpm and SecMI write (config/CIFAR10.txt, logdir/flagfile.txt) into UNet kwargs and a schedule."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError
from .config_io import read_config_text

__all__ = ["parse_flagfile", "read_flagfile", "MODEL_FLAGS"]

# Flags that describe the network or its diffusion process; everything else (lr, logdir, ...) is ignored.
_INT_FLAGS = {"T", "ch", "num_res_blocks", "img_size"}
_FLOAT_FLAGS = {"dropout", "beta_1", "beta_T"}
_MULTI_INT_FLAGS = {"ch_mult", "attn"}
_STRING_FLAGS = {"mean_type", "var_type"}
MODEL_FLAGS = _INT_FLAGS | _FLOAT_FLAGS | _MULTI_INT_FLAGS | _STRING_FLAGS
# Flags pytorch-ddpm's main.py and absl define besides the model's: read past without a word. Any other
# flag that looks like a model flag (--chmult, --num_res_block) is a typo that would otherwise surface
# as dozens of missing weights, so it is refused with its line.
_OTHER_FLAGS = {"train", "eval", "lr", "grad_clip", "total_steps", "warmup", "batch_size", "num_workers",
                "ema_decay", "parallel", "logdir", "sample_size", "sample_step", "save_step", "eval_step",
                "num_images", "fid_use_torch", "fid_cache", "flagfile", "undefok", "logtostderr",
                "alsologtostderr", "log_dir", "verbosity", "v", "stderrthreshold", "showprefixforinfo",
                "run_with_pdb", "pdb_post_mortem", "pdb", "run_with_profiling", "profile_file",
                "use_cprofile_for_profiling", "only_check_args", "logger_levels"}


def _typo_of(name: str) -> str | None:
    """The model flag `name` probably misspells, or None when it is some other program's flag."""
    if name in _OTHER_FLAGS or (name.startswith("no") and name[2:] in _OTHER_FLAGS):
        return None
    squashed = name.replace("_", "").replace("-", "").lower()
    for flag in sorted(MODEL_FLAGS):
        if flag.replace("_", "").lower() == squashed:
            return flag
    close = difflib.get_close_matches(name, sorted(f for f in MODEL_FLAGS if len(f) > 2), n=1, cutoff=0.8)
    return close[0] if close else None


def parse_flagfile(text: str, source: str = "flagfile") -> dict[str, Any]:
    """Parse `--name=value` lines; repeated multi-int flags accumulate, comma lists also work.

    Flags of the training program and of absl are ignored; an unknown flag that looks like a
    misspelt model flag is a ConfigError naming its line.
    """
    values: dict[str, Any] = {}
    seen_multi: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("//"):
            continue
        if not line.startswith("-"):
            continue  # absl ignores positional leftovers in flagfiles too
        name, has_value, value = line.lstrip("-").partition("=")
        name = name.strip()
        if name not in MODEL_FLAGS:
            typo = _typo_of(name)
            if typo is not None:
                raise ConfigError(f"{source} line {number}: unknown flag --{name}; did you mean --{typo}? "
                                  "Fix the flagfile")
            continue
        if not has_value:
            raise ConfigError(f"{source} line {number}: flag --{name} needs a value (--{name}=...)")
        value = value.strip().strip("'\"")
        try:
            if name in _INT_FLAGS:
                values[name] = int(value)
            elif name in _FLOAT_FLAGS:
                values[name] = float(value)
            elif name in _MULTI_INT_FLAGS:
                items = [int(v) for v in value.replace(" ", "").split(",") if v != ""]
                # The first occurrence replaces the default list; later ones append, as absl does
                # (in place: a file of many repeated lines must not cost quadratic time).
                if name not in seen_multi:
                    values[name] = []
                    seen_multi.add(name)
                values[name].extend(items)
            else:
                values[name] = value
        except ValueError:
            raise ConfigError(f"{source} line {number}: --{name}={value[:40]!r} is not a valid number") from None
    return values


def read_flagfile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model config {path} does not exist; pass an absl flagfile such as config/CIFAR10.txt")
    return parse_flagfile(read_config_text(path, "model config"), source=str(path))
