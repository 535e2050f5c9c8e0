"""Our model format: a folder with config.json (architecture, schedule, metadata) and model.pt or model.safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import atomic_io
from ..errors import ConfigError, ModelLoadError, require_extra
from ..schedule import Schedule, schedule_from_dict
from .checkpoint_io import (
    load_state_dict_checked, read_safetensors, safe_torch_load, safetensors_shapes, tensor_shapes,
)
from .config_io import check_schedule_steps, read_config_json, require_regular_file
from .unet import UNet, normalize_unet_config
from .unet_shapes import check_unet_fits_file, check_unet_image_size, check_unet_state_shapes
from .wrapper import EpsModel

__all__ = ["FORMAT_TAG", "FORMAT_VERSION", "save_model", "load_qmia", "is_qmia_folder", "read_qmia_config"]

FORMAT_TAG = "qmia-fast-model"
FORMAT_VERSION = 1
WEIGHT_FILES = {"pt": "model.pt", "safetensors": "model.safetensors"}


def is_qmia_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        loaded = read_config_json(config)
    except ModelLoadError:
        return False
    return isinstance(loaded, dict) and loaded.get("format") == FORMAT_TAG


def save_model(
    model: EpsModel | UNet,
    folder: str | Path,
    schedule: Schedule | None = None,
    metadata: Mapping[str, Any] | None = None,
    weights_format: str = "pt",
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` (a built-in UNet, or an EpsModel wrapping one) to `folder` in our format; returns the folder.

    Weights are written before config.json, each atomically, so a reader never sees a config
    without complete weights. `state_dict` overrides the module's weights (e.g. EMA weights).
    """
    folder = Path(folder)
    net = model.net if isinstance(model, EpsModel) else model
    if schedule is None:
        schedule = getattr(model, "schedule", None)
    if schedule is None:
        raise ConfigError("save_model: pass schedule= (the model carries none)")
    if not isinstance(net, UNet):
        raise ConfigError(
            f"save_model: only the built-in DDPM UNet can be saved in the qmia format, got {type(net).__name__}"
        )
    if weights_format not in WEIGHT_FILES:
        raise ConfigError(f"save_model: weights_format = {weights_format!r}; use 'pt' or 'safetensors'")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in (state_dict or net.state_dict()).items()}
    weights_name = WEIGHT_FILES[weights_format]
    if weights_format == "safetensors":
        st = require_extra("safetensors.torch", "safetensors", "saving a model as model.safetensors")
        with atomic_io.atomic_path(folder / weights_name) as tmp:
            st.save_file(tensors, str(tmp))
    else:
        with atomic_io.atomic_path(folder / weights_name) as tmp:
            torch.save(tensors, tmp)
    config = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "architecture": "ddpm-unet",
        "prediction_type": "epsilon",
        "unet": dict(net.config),
        "schedule": schedule.to_dict(),
        "weights": weights_name,
        "metadata": dict(metadata or {}),
    }
    atomic_io.write_json(folder / "config.json", config)
    return folder


def read_qmia_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise ModelLoadError(f"model folder {folder} has no config.json; is it a qmia-fast model folder?")
    config = read_config_json(path, "model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT_TAG:
        raise ModelLoadError(f"{path} is not a qmia-fast model config (no \"format\": \"{FORMAT_TAG}\")")
    version = config.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelLoadError(
            f"{path}: \"version\" = {json.dumps(version)[:40]} must be an integer (1 to {FORMAT_VERSION} for this "
            f"qmia-fast, which writes {FORMAT_VERSION}); fix the config"
        )
    if version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format version {version}; this qmia-fast reads versions up to {FORMAT_VERSION} "
            "(upgrade qmia-fast)"
        )
    if config.get("architecture") != "ddpm-unet":
        raise ModelLoadError(f"{path}: architecture {_show(config.get('architecture'))} is unknown; expected 'ddpm-unet'")
    return config


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _weights_path(folder: Path, config: Mapping[str, Any]) -> Path:
    named = config.get("weights")
    if named is not None and not (isinstance(named, str) and named in WEIGHT_FILES.values()):
        raise ModelLoadError(
            f"{folder / 'config.json'}: weights = {_show(named)}; expected model.pt or model.safetensors"
        )
    candidates = [named] if named else [WEIGHT_FILES["safetensors"], WEIGHT_FILES["pt"]]
    present = [name for name in candidates if (folder / name).exists()]
    if not present:
        raise ModelLoadError(f"model folder {folder} has no weights file ({' or '.join(candidates)})")
    path = folder / present[0]
    require_regular_file(path, "weights")
    return path


def _read_weights(path: Path, trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    """The weights as name -> tensor; a .pt is memory-mapped, so reading it costs no memory until used."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = safe_torch_load(path, trust_checkpoint, what="weights", mmap=True)
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"weights {path} hold a {type(state).__name__}, expected a state dict")
    return dict(state)


def _unet_settings(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    settings = config.get("unet")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ModelLoadError(f"{where}: \"unet\" must be an object of UNet settings, not {type(settings).__name__}")
    try:
        return normalize_unet_config(settings)
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ModelLoadError(f"{where}: malformed \"unet\" settings ({type(exc).__name__}: {str(exc)[:120]})") from None


def _schedule(config: Mapping[str, Any], where: str) -> Schedule:
    spec = config.get("schedule")
    if spec is None:
        spec = {}
    check_schedule_steps(spec, where)
    try:
        return schedule_from_dict(spec)
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, KeyError, AttributeError) as exc:
        raise ModelLoadError(f"{where}: malformed \"schedule\" ({type(exc).__name__}: {str(exc)[:120]})") from None


def load_qmia(folder: str | Path, trust_checkpoint: bool = False) -> EpsModel:
    """Load a qmia model folder, checking config against the weights' shapes before the UNet takes any memory."""
    folder = Path(folder)
    config = read_qmia_config(folder)
    where = str(folder / "config.json")
    unet_config = _unet_settings(config, where)
    schedule = _schedule(config, where)
    if schedule.T != unet_config["T"]:
        raise ModelLoadError(
            f"{where}: the schedule has T = {schedule.T} steps but the UNet's time embedding has T = {unet_config['T']}"
        )
    check_unet_image_size(unet_config, where)
    path = _weights_path(folder, config)
    source = f"{folder} (config.json against {path.name})"
    # Both readers look at the weights' index only (a header, a memory map), so a damaged file is
    # reported as such before the config is compared with it name by name.
    if path.suffix == ".safetensors":
        shapes, state = safetensors_shapes(path), None
    else:
        state = _read_weights(path, trust_checkpoint)
        shapes = tensor_shapes(state, str(path))
    check_unet_state_shapes(unet_config, shapes, source)
    # Tensors sharing one storage can show any shape; the file size bounds what they really hold.
    check_unet_fits_file(unet_config, path.stat().st_size, source)
    if state is None:
        state = _read_weights(path, trust_checkpoint)
    net = UNet(**unet_config)
    load_state_dict_checked(net, state, source=str(folder))
    del state  # drops the memory map of model.pt
    net.eval()
    described = {
        "format": "qmia",
        "path": str(folder),
        "architecture": "ddpm-unet",
        "unet": unet_config,
        "schedule": schedule.to_dict(),
        "metadata": config.get("metadata", {}),
    }
    return EpsModel(net, schedule, net.image_shape, described, format="qmia")
