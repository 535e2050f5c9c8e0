"""One pipeline component (denoiser, VAE, text encoder) read safely: config checked against its weights' index on the meta device, then built."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError
from .config_io import MAX_IMAGE_SIDE, read_config_json
from .diffusers_weights import (
    BIN_NAME, SAFETENSORS_NAME, WeightsIndex, build_on_meta, check_against_weights, check_config_sizes,
    locate_weights, read_weights,
)

__all__ = ["read_component_config", "PreparedComponent", "prepare_component", "run_on_meta", "check_layer_counts",
           "check_positive_ints", "check_unet_condition_sizes", "check_dit_sizes", "check_vae_sizes",
           "jsonable_config", "DIFFUSERS_WEIGHTS", "TRANSFORMERS_WEIGHTS"]

DIFFUSERS_WEIGHTS = (SAFETENSORS_NAME, BIN_NAME)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def read_component_config(folder: Path, role: str, file_name: str = "config.json") -> dict[str, Any]:
    """A component's config.json as a dict; a missing file names the component and what it must hold."""
    path = folder / file_name
    if not path.exists():
        raise ModelLoadError(f"{role} folder {folder} has no {file_name}; save the component with save_pretrained")
    value = read_config_json(path, f"{role} config")
    if not isinstance(value, dict):
        raise ModelLoadError(f"{role} config {path} must hold a JSON object describing the component")
    return value


def run_on_meta(run: Callable[[], Any], where: str, what: str) -> Any:
    """run() on the meta device (shapes only, no arithmetic) or None where an operator has no meta kernel;
    whatever the layers raise means the config cannot do `what`, said in one line."""
    try:
        with torch.device("meta"), torch.no_grad():
            return run()
    except NotImplementedError:
        return None  # says nothing about the config
    except Exception as exc:  # noqa: BLE001 - whatever the layers raise, the config is at fault
        raise ModelLoadError(f"{where}: {what} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                             "fix config.json") from None


class PreparedComponent:
    """A component whose config matched its weights on the meta device; load() reads the weights and builds it."""

    def __init__(self, role: str, folder: Path, class_name: str, config: dict, meta: nn.Module, index: WeightsIndex,
                 build: Callable[[], nn.Module], rename: Callable[[dict], dict]):
        self.role, self.folder, self.class_name, self.config = role, folder, class_name, config
        self.meta, self.index, self._build, self._rename = meta, index, build, rename

    @property
    def where(self) -> str:
        return f"{self.role} {self.folder}"

    def load(self) -> nn.Module:
        state = self._rename(read_weights(self.index, self.meta))
        try:
            module = self._build()
            module.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - only reachable if the library builds differently off the meta device
            message = " ".join(str(exc).split())[:300]
            raise ModelLoadError(f"{self.where} could not be loaded ({type(exc).__name__}: {message})") from None
        del state
        self.meta = self.index = None  # the meta copy and mapped weights are not needed any more
        return module.eval()


def prepare_component(role: str, folder: Path, model_class, config: dict, trust_checkpoint: bool, *,
                      check_sizes: Callable[[Mapping[str, Any], int, str], None],
                      weight_names: tuple[str, str] = DIFFUSERS_WEIGHTS,
                      build_meta: Callable[[], nn.Module] | None = None,
                      build: Callable[[], nn.Module] | None = None,
                      rename: Callable[[dict, set], dict] | None = None) -> PreparedComponent:
    """Check `config` against the weights in `folder` without allocating them; diffusers classes by default.

    check_sizes bounds the config's module counts by the number of tensors before anything is
    built; build_meta/build make the module (default: model_class.from_config); rename maps the
    weights' names onto the module's (given the module's own names), for checkpoints of older
    library versions.
    """
    where = f"{role} {folder}"
    index = WeightsIndex(locate_weights(folder, weight_names), trust_checkpoint)
    check_sizes(config, len(index.shapes), f"{where}/config.json")
    if build_meta is None:
        meta = build_on_meta(model_class, config, f"{where}/config.json")
    else:
        try:
            with torch.device("meta"):
                meta = build_meta()
        except Exception as exc:  # noqa: BLE001 - libraries raise many types for configs they cannot build
            raise ModelLoadError(f"{where}/config.json does not describe a {model_class.__name__} that can be built "
                                 f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    expected = set(meta.state_dict())
    renamer = (lambda state: state) if rename is None else (lambda state: rename(state, expected))
    index.shapes = renamer(index.shapes)
    index.loaded = renamer(index.loaded)
    check_against_weights(meta, index, where)
    return PreparedComponent(role, folder, model_class.__name__, config, meta, index,
                             build or (lambda: model_class.from_config(dict(config))), renamer)


# ---------------------------------------------------------------------- size checks before building


def _int(config: Mapping[str, Any], key: str, default, where: str, minimum: int = 0):
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelLoadError(f"{where}: {key} = {value!r:.60} must be an integer of at least {minimum}")
    return value


def _flat_ints(value, key: str, where: str) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[int] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flat_ints(item, key, where))
        elif isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ModelLoadError(f"{where}: {key} = {value!r:.60} must be a non-negative integer or a list of them")
        else:
            out.append(item)
    return out


def check_layer_counts(config: Mapping[str, Any], n_tensors: int, where: str, *, layer_keys: Mapping[str, int],
                       list_keys: tuple[str, ...] = (), default_levels: int = 1) -> None:
    """Every level and every layer holds tensors: a config asking for more layers than the weights have tensors
    describes other weights, and is refused before a huge module tree is built even on the meta device."""
    levels = 0
    for key in list_keys:
        value = config.get(key)
        if value is None:
            levels = max(levels, default_levels)
            continue
        if not isinstance(value, (list, tuple)):
            raise ModelLoadError(f"{where}: {key} = {value!r:.60} must be a list")
        levels = max(levels, len(value))
    layers = sum(sum(_flat_ints(config.get(key, default), key, where)) for key, default in layer_keys.items())
    if (layers + 1) * max(levels, 1) > n_tensors:
        raise ModelLoadError(f"{where}: {max(levels, 1)} levels of {layers} layers ask for more layers than the "
                             f"weights' {n_tensors} tensors can hold; the config does not describe these weights")


def check_positive_ints(config: Mapping[str, Any], defaults: Mapping[str, int], where: str) -> None:
    for key, default in defaults.items():
        _int(config, key, default, where, minimum=1)


def check_unet_condition_sizes(config: Mapping[str, Any], n_tensors: int, where: str) -> None:
    """UNet2DConditionModel: UNet2DModel's checks plus its transformer layers and an integer cross-attention width."""
    check_config_sizes(config, n_tensors, where)
    check_layer_counts(config, n_tensors, where, layer_keys={"transformer_layers_per_block": 1},
                       list_keys=("block_out_channels",), default_levels=4)
    width = config.get("cross_attention_dim", 1280)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelLoadError(f"{where}: cross_attention_dim = {width!r:.60} must be one positive integer "
                             "(one text encoder's hidden size); several encoders are not supported")


def check_dit_sizes(config: Mapping[str, Any], n_tensors: int, where: str) -> None:
    """DiT transformers: blocks bounded by the tensors, a square latent side and a patch size."""
    check_layer_counts(config, n_tensors, where, layer_keys={"num_layers": 28})
    size = _int(config, "sample_size", 32, where, minimum=1)
    if size > MAX_IMAGE_SIDE:
        raise ModelLoadError(f"{where}: sample_size = {size} is larger than any image side ({MAX_IMAGE_SIDE})")
    check_positive_ints(config, {"patch_size": 2, "in_channels": 4, "num_attention_heads": 16,
                                 "attention_head_dim": 72}, where)


def check_vae_sizes(config: Mapping[str, Any], n_tensors: int, where: str) -> None:
    """AutoencoderKL / VQModel: levels and layers bounded by the tensors, positive channel counts."""
    check_layer_counts(config, n_tensors, where, layer_keys={"layers_per_block": 1},
                       list_keys=("block_out_channels", "down_block_types", "up_block_types"))
    check_positive_ints(config, {"in_channels": 3, "out_channels": 3, "latent_channels": 4}, where)


def jsonable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's entries that JSON can hold (diffusers' frozen configs carry tuples, which it turns into lists)."""
    import json

    out = {}
    for key, value in dict(config).items():
        try:
            out[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return out
