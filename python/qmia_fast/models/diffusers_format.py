"""Loader for diffusers UNet2DModel folders (bare model or pipeline with unet/ and scheduler/), fully offline."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, ModelLoadError, require_extra
from ..schedule import linear_schedule, schedule_from_diffusers_config
from .config_io import check_schedule_steps, read_config_json
from .diffusers_weights import (
    WeightsIndex, build_on_meta, check_against_weights, check_config_sizes, check_meta_forward, config_image_shape,
    locate_weights, quiet_diffusers, read_weights,
)
from .wrapper import PREDICTION_TYPES, EpsModel

__all__ = ["load_diffusers", "is_diffusers_folder", "find_unet_folder"]

_UNCONDITIONAL = "UNet2DModel"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = read_config_json(path)
    except ModelLoadError:
        return None
    return value if isinstance(value, dict) else None


def is_diffusers_folder(folder: Path) -> bool:
    if (folder / "model_index.json").is_file() or (folder / "unet" / "config.json").is_file():
        return True
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    return bool(config) and ("_class_name" in config or "_diffusers_version" in config)


def find_unet_folder(folder: Path) -> Path:
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet"
    if (folder / "config.json").is_file():
        return folder
    raise ModelLoadError(
        f"diffusers model {folder}: found neither unet/config.json nor config.json; "
        "pass a UNet2DModel folder or a pipeline folder saved with save_pretrained"
    )


def _find_scheduler_config(folder: Path, unet_folder: Path) -> Path | None:
    for candidate in (
        folder / "scheduler" / "scheduler_config.json",
        folder / "scheduler_config.json",
        unet_folder.parent / "scheduler" / "scheduler_config.json",
    ):
        if candidate.is_file():
            return candidate
    return None


def _scheduler_settings(config, folder: Path, unet_folder: Path) -> tuple[dict[str, Any], str | None]:
    if isinstance(config, Mapping):
        return dict(config), "config dict"
    if config is not None:
        path = Path(config)
        if path.is_dir():
            path = path / "scheduler_config.json"
        if not path.exists():
            raise ModelLoadError(f"scheduler config {path} is missing; pass a scheduler_config.json")
        settings = read_config_json(path, "scheduler config")
        if not isinstance(settings, dict):
            raise ModelLoadError(f"scheduler config {path} must hold a JSON object")
        return settings, str(path)
    found = _find_scheduler_config(folder, unet_folder)
    if found is None:
        return {}, None
    settings = read_config_json(found, "scheduler config")
    if not isinstance(settings, dict):
        raise ModelLoadError(f"scheduler config {found} must hold a JSON object")
    return settings, str(found)


def _call_diffusers(net, x, t, cond=None):
    return net(x, t, return_dict=False)[0]


def load_diffusers(path: str | Path, config=None, trust_checkpoint: bool = False) -> EpsModel:
    """Load an unconditional diffusers UNet2DModel; the schedule and prediction type come from its scheduler config.

    config.json is checked against the weights' index (safetensors header, memory-mapped .bin)
    on the meta device before the model is built; diffusers' own logging stays silent.
    """
    folder = Path(path)
    if folder.is_file():  # a config.json or weights file inside the model folder
        folder = folder.parent
    if not folder.is_dir():
        raise ModelLoadError(f"diffusers model {folder} does not exist; pass the model or pipeline folder")
    unet_folder = find_unet_folder(folder)
    where = str(unet_folder / "config.json")
    unet_config = read_config_json(unet_folder / "config.json")
    if not isinstance(unet_config, dict):
        raise ModelLoadError(f"{where} must hold a JSON object describing a UNet2DModel")
    class_name = unet_config.get("_class_name", _UNCONDITIONAL)
    if class_name != _UNCONDITIONAL:
        raise ModelLoadError(
            f"diffusers model {unet_folder} is a {class_name!r:.60}; only unconditional UNet2DModel targets are supported"
        )
    if unet_config.get("num_class_embeds") or unet_config.get("class_embed_type"):
        raise ModelLoadError(
            f"diffusers model {unet_folder} is class-conditional; only unconditional UNet2DModel targets are supported"
        )

    settings, scheduler_source = _scheduler_settings(config, folder, unet_folder)
    if scheduler_source is None:
        schedule = linear_schedule()
    else:
        check_schedule_steps(settings, f"scheduler config ({scheduler_source})")
        try:
            schedule = schedule_from_diffusers_config(settings)
        except ConfigError as exc:
            raise ModelLoadError(f"scheduler config ({scheduler_source}): {exc}") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise ModelLoadError(f"scheduler config ({scheduler_source}) is malformed "
                                 f"({type(exc).__name__}: {str(exc)[:120]})") from None
    prediction_type = settings.get("prediction_type", "epsilon")
    if not isinstance(prediction_type, str) or prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"scheduler config ({scheduler_source}): prediction_type = {prediction_type!r:.60} is not supported; "
            f"expected one of {', '.join(PREDICTION_TYPES)}"
        )

    index = WeightsIndex(locate_weights(unet_folder), trust_checkpoint)
    check_config_sizes(unet_config, len(index.shapes), where)
    diffusers = require_extra("diffusers", "diffusers", "loading a diffusers model")
    with quiet_diffusers(diffusers):
        model_class = diffusers.UNet2DModel
        meta = build_on_meta(model_class, unet_config, where)
        check_against_weights(meta, index, str(unet_folder))
        check_meta_forward(meta, config_image_shape(unet_config), where)
        state = read_weights(index, meta)
        del meta
        try:
            net = model_class.from_config(dict(unet_config))
            net.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - only reachable if diffusers builds differently off the meta device
            message = " ".join(str(exc).split())[:300]
            raise ModelLoadError(f"diffusers model {unet_folder} could not be loaded ({type(exc).__name__}: {message})") from None
        del state, index
    net.eval()

    size = net.config.sample_size
    if size is None:
        raise ModelLoadError(f"diffusers model {unet_folder}: config.json has no sample_size; cannot tell the image size")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    image_shape = (int(net.config.in_channels), int(height), int(width))
    out_channels = int(net.config.out_channels)
    if out_channels not in (image_shape[0], 2 * image_shape[0]):
        raise ModelLoadError(
            f"diffusers model {unet_folder}: out_channels = {out_channels} fits neither eps ({image_shape[0]}) "
            f"nor eps + learned variance ({2 * image_shape[0]})"
        )
    if scheduler_source is None:
        # Said only once the model has loaded: an error in the weights should not come after a guess.
        warnings.warn(
            f"no scheduler config found for {folder}; assuming DDPM linear betas 1e-4..0.02 over 1000 steps "
            "and epsilon prediction. Pass --model-config scheduler_config.json if that is wrong.",
            UserWarning,
            stacklevel=3,
        )
    described = {
        "format": "diffusers",
        "path": str(folder),
        "unet_config": {k: v for k, v in dict(net.config).items() if _jsonable(v)},
        "scheduler_source": scheduler_source or "default linear",
        "schedule": schedule.to_dict(),
        "prediction_type": prediction_type,
        "learned_variance": out_channels == 2 * image_shape[0],
    }
    return EpsModel(net, schedule, image_shape, described, format="diffusers",
                    prediction_type=prediction_type, call=_call_diffusers)


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
