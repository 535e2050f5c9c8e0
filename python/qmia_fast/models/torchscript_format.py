"""Loader for TorchScript noise predictors; their image shape and schedule come from a config dict or JSON file."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ConfigError, ModelLoadError
from ..schedule import schedule_from_dict
from .config_io import MAX_IMAGE_SIDE, check_schedule_steps, read_config_json
from .wrapper import PREDICTION_TYPES, EpsModel

__all__ = ["load_torchscript", "TORCHSCRIPT_CONFIG_EXAMPLE"]

TORCHSCRIPT_CONFIG_EXAMPLE = (
    '{"image_shape": [3, 32, 32], "schedule": {"kind": "linear", "T": 1000, "beta_1": 0.0001, "beta_T": 0.02}, '
    '"prediction_type": "epsilon"}'
)


def _read_config(config) -> tuple[dict[str, Any], str]:
    if isinstance(config, Mapping):
        return dict(config), "config dict"
    path = Path(config)
    if not path.exists():
        raise ModelLoadError(f"model config {path} does not exist")
    loaded = read_config_json(path)
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"model config {path} must hold a JSON object like {TORCHSCRIPT_CONFIG_EXAMPLE}")
    return loaded, str(path)


def load_torchscript(path: str | Path, config=None, trust_checkpoint: bool = False) -> EpsModel:
    """torch.jit.load a module called as net(x, t) -> eps (or a tuple whose first item is eps)."""
    path = Path(path)
    if config is None:
        raise ModelLoadError(
            f"TorchScript model {path}: its image shape and noise schedule are unknown; pass them with "
            f"--model-config FILE.json / config={TORCHSCRIPT_CONFIG_EXAMPLE}"
        )
    settings, source = _read_config(config)
    shape = settings.get("image_shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
            or shape[1] > MAX_IMAGE_SIDE or shape[2] > MAX_IMAGE_SIDE):
        raise ConfigError(
            f"model config ({source}): image_shape = {shape!r:.60} must be [channels, height, width] with sides "
            f"up to {MAX_IMAGE_SIDE}, e.g. [3, 32, 32]"
        )
    if "schedule" not in settings:
        raise ConfigError(f"model config ({source}): give the noise schedule, e.g. {TORCHSCRIPT_CONFIG_EXAMPLE}")
    check_schedule_steps(settings["schedule"], f"model config ({source})")
    try:
        schedule = schedule_from_dict(settings["schedule"])
    except (TypeError, ValueError, ArithmeticError, KeyError, AttributeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model config ({source}): malformed schedule ({type(exc).__name__}: {str(exc)[:120]})") from None
    prediction_type = settings.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"model config ({source}): prediction_type = {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}"
        )
    if not path.is_file():
        raise ModelLoadError(f"TorchScript model {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():
            # torch 2.10+ marks TorchScript deprecated; users who hand us an archive still need it to load quietly.
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - jit raises RuntimeError or ValueError depending on the damage
        detail = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"TorchScript model {path} is truncated, corrupt or not TorchScript ({detail})") from None
    net.eval()
    described = {
        "format": "torchscript",
        "path": str(path),
        "config_source": source,
        "image_shape": list(shape),
        "schedule": schedule.to_dict(),
        "prediction_type": prediction_type,
    }
    return EpsModel(net, schedule, tuple(shape), described, format="torchscript", prediction_type=prediction_type)
