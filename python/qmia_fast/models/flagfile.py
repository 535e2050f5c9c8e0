"""Read the absl flagfiles that pytorch-ddpm and SecMI write (config/CIFAR10.txt, logdir/flagfile.txt) into UNet kwargs and a schedule."""
from __future__ import annotations

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


def parse_flagfile(text: str, source: str = "flagfile") -> dict[str, Any]:
    """Parse `--name=value` lines; repeated multi-int flags accumulate, comma lists also work; unknown flags are ignored."""
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
