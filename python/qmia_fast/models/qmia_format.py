"""Our model format: a folder with config.json (architecture, schedule, metadata) and model.pt or model.safetensors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import atomic_io
from ..errors import ConfigError, ModelLoadError, require_extra
from ..schedule import Schedule, schedule_from_dict
from .checkpoint_io import load_state_dict_checked, safe_torch_load
from .unet import UNet, normalize_unet_config
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
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT_TAG
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


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
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"model folder {folder} has no config.json; is it a qmia-fast model folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); the file is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_TAG:
        raise ModelLoadError(f"{path} is not a qmia-fast model config (no \"format\": \"{FORMAT_TAG}\")")
    version = config.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format version {version!r}; this qmia-fast reads versions up to {FORMAT_VERSION} "
            "(upgrade qmia-fast)"
        )
    if config.get("architecture") != "ddpm-unet":
        raise ModelLoadError(f"{path}: architecture {config.get('architecture')!r} is unknown; expected 'ddpm-unet'")
    return config


def _read_weights(folder: Path, config: Mapping[str, Any], trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    named = config.get("weights")
    if named is not None and named not in WEIGHT_FILES.values():
        raise ModelLoadError(f"{folder / 'config.json'}: weights = {named!r}; expected model.pt or model.safetensors")
    candidates = [named] if named else [WEIGHT_FILES["safetensors"], WEIGHT_FILES["pt"]]
    present = [name for name in candidates if (folder / name).is_file()]
    if not present:
        raise ModelLoadError(f"model folder {folder} has no weights file ({' or '.join(candidates)})")
    path = folder / present[0]
    if path.suffix == ".safetensors":
        st = require_extra("safetensors.torch", "safetensors", f"reading {path}")
        try:
            return st.load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise ModelLoadError(f"weights {path} are truncated or corrupt ({type(exc).__name__}: {exc})") from None
    state = safe_torch_load(path, trust_checkpoint, what="weights")
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"weights {path} hold a {type(state).__name__}, expected a state dict")
    return dict(state)


def load_qmia(folder: str | Path, trust_checkpoint: bool = False) -> EpsModel:
    folder = Path(folder)
    config = read_qmia_config(folder)
    try:
        unet_config = normalize_unet_config(config.get("unet") or {})
        schedule = schedule_from_dict(config.get("schedule") or {})
    except ConfigError as exc:
        raise ModelLoadError(f"{folder / 'config.json'}: {exc}") from None
    if schedule.T != unet_config["T"]:
        raise ModelLoadError(
            f"{folder / 'config.json'}: the schedule has T = {schedule.T} steps but the UNet's time embedding "
            f"has T = {unet_config['T']}"
        )
    net = UNet(**unet_config)
    load_state_dict_checked(net, _read_weights(folder, config, trust_checkpoint), source=str(folder))
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
