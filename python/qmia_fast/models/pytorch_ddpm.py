"""Loader for pytorch-ddpm / SecMI / PIA checkpoints: a torch dict with ema_model or net_model, plus an absl flagfile."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from ..schedule import linear_schedule
from .checkpoint_io import load_state_dict_checked, safe_torch_load, strip_wrapper_prefixes, tensor_shapes
from .config_io import check_schedule_steps, read_config_json
from .flagfile import read_flagfile
from .unet import CIFAR10_UNET_CONFIG, UNet, normalize_unet_config
from .unet_shapes import check_unet_fits_file, check_unet_image_size, check_unet_state_shapes
from .wrapper import EpsModel

__all__ = ["load_pytorch_ddpm", "resolve_ddpm_config", "select_state_dict", "FLAGFILE_NAME"]

FLAGFILE_NAME = "flagfile.txt"  # what pytorch-ddpm writes into its logdir next to ckpt.pt
_SCHEDULE_KEYS = ("beta_1", "beta_T")
# pytorch-ddpm's mean_type -> what the network predicts (xprev cannot be turned into eps without the sampler).
_MEAN_TYPES = {"epsilon": "epsilon", "xstart": "sample"}
_STATE_DICT_KEYS = ("ema_model", "net_model", "state_dict", "model")


def resolve_ddpm_config(config, checkpoint: Path) -> tuple[dict[str, Any], str]:
    """Return (flag values, where they came from) from a dict, a JSON/flagfile path, a flagfile.txt beside the checkpoint, or the defaults."""
    if isinstance(config, Mapping):
        return dict(config), "config dict"
    if config is not None:
        path = Path(config)
        if path.suffix.lower() == ".json":
            loaded = read_config_json(path)
            if not isinstance(loaded, dict):
                raise ModelLoadError(f"model config {path} must hold a JSON object of UNet settings")
            return loaded, str(path)
        return read_flagfile(path), str(path)
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    beside = folder / FLAGFILE_NAME
    if beside.is_file():
        return read_flagfile(beside), str(beside)
    warnings.warn(
        f"no model config given and no {FLAGFILE_NAME} beside {checkpoint}; assuming the CIFAR-10 DDPM "
        "(ch 128, ch_mult 1,2,2,2, attn 1, 2 res blocks, 32x32, linear betas 1e-4..0.02, T 1000). "
        "Pass --model-config FLAGFILE if that is wrong.",
        UserWarning,
        stacklevel=3,
    )
    return {}, "CIFAR-10 defaults"


def select_state_dict(checkpoint: Any, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the weights out of a loaded checkpoint: ema_model, then net_model, then a bare state dict."""
    if isinstance(checkpoint, nn.Module):  # only reachable with trust_checkpoint=True (a pickled module)
        return strip_wrapper_prefixes(checkpoint.state_dict()), "pickled module"
    if not isinstance(checkpoint, Mapping):
        raise ModelLoadError(f"{source} holds a {type(checkpoint).__name__}; expected a dict with 'ema_model' or 'net_model'")
    for key in _STATE_DICT_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if isinstance(inner, Mapping) and inner:
            return strip_wrapper_prefixes(inner), key
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return strip_wrapper_prefixes(checkpoint), "state dict"
    keys = ", ".join(sorted(map(str, checkpoint))[:8]) or "none"
    raise ModelLoadError(
        f"{source} has no 'ema_model' or 'net_model' state dict (top-level keys: {keys}); "
        "is it a pytorch-ddpm/SecMI checkpoint? Otherwise pass --model-format"
    )


def load_pytorch_ddpm(path: str | Path, config=None, trust_checkpoint: bool = False) -> EpsModel:
    """Load a pytorch-ddpm/SecMI checkpoint; the config is checked against the weights' shapes before the UNet is built."""
    path = Path(path)
    flags, config_source = resolve_ddpm_config(config, path)
    mean_type = flags.pop("mean_type", "epsilon")
    flags.pop("var_type", None)
    if not isinstance(mean_type, str) or mean_type not in _MEAN_TYPES:
        raise ModelLoadError(
            f"model config ({config_source}): mean_type = {mean_type!r:.60} is not supported; "
            "only epsilon- and xstart-predicting DDPMs can be scored"
        )
    schedule_flags = {key: flags.pop(key) for key in _SCHEDULE_KEYS if key in flags}
    try:
        unet_config = normalize_unet_config({k: v for k, v in flags.items() if k in CIFAR10_UNET_CONFIG})
        check_schedule_steps({"T": unet_config["T"]}, f"model config ({config_source})")
        schedule = linear_schedule(unet_config["T"], schedule_flags.get("beta_1", 1e-4), schedule_flags.get("beta_T", 0.02))
    except ConfigError as exc:
        raise ConfigError(f"model config ({config_source}): {exc}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"model config ({config_source}): malformed value ({type(exc).__name__}: {str(exc)[:120]})") from None
    ignored = sorted(map(str, set(flags) - set(CIFAR10_UNET_CONFIG)))
    if ignored and isinstance(config, Mapping):
        raise ConfigError(
            f"model config: unknown key(s) {ignored}; valid keys are "
            f"{sorted(set(CIFAR10_UNET_CONFIG) | set(_SCHEDULE_KEYS) | {'mean_type'})}"
        )

    check_unet_image_size(unet_config, f"model config ({config_source})")
    # Memory-mapped: the weights take no memory until the config has been checked against their shapes.
    checkpoint = safe_torch_load(path, trust_checkpoint, mmap=True)
    state_dict, chosen = select_state_dict(checkpoint, str(path))
    source = f"{path} [{chosen}] with config from {config_source}"
    shapes = tensor_shapes(state_dict, source)
    check_unet_state_shapes(unet_config, shapes, source)
    # Tensors sharing one storage can show any shape; the file size bounds what they really hold.
    check_unet_fits_file(unet_config, path.stat().st_size, source)
    net = UNet(**unet_config)
    load_state_dict_checked(net, state_dict, source=source)
    del checkpoint, state_dict
    net.eval()
    described = {
        "format": "pytorch-ddpm",
        "path": str(path),
        "weights": chosen,
        "config_source": config_source,
        "architecture": "ddpm-unet",
        "unet": unet_config,
        "schedule": schedule.to_dict(),
        "prediction_type": _MEAN_TYPES[mean_type],
    }
    return EpsModel(net, schedule, net.image_shape, described, format="pytorch-ddpm",
                    prediction_type=_MEAN_TYPES[mean_type])
