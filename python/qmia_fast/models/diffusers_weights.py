"""A diffusers UNet2DModel's weights, read safely: files located, index read lazily, config checked on the meta device, diffusers kept quiet."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..errors import ModelLoadError
from .checkpoint_io import key_mismatch, read_safetensors, safe_torch_load, safetensors_shapes, tensor_shapes
from .config_io import MAX_IMAGE_SIDE, read_config_json, require_regular_file
from .unet_shapes import BYTES_PER_PARAMETER_MIN

__all__ = ["quiet_diffusers", "locate_weights", "WeightsIndex", "build_on_meta", "check_config_sizes",
           "check_against_weights", "check_meta_forward", "read_weights", "config_image_shape"]

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
_INDEX_SUFFIX = ".index.json"
# UNet2DModel's defaults for the keys that decide how many modules it builds.
_DEFAULT_LEVELS = 4
_DEFAULT_LAYERS_PER_BLOCK = 2


@contextlib.contextmanager
def quiet_diffusers(diffusers) -> Iterator[None]:
    """Silence diffusers' logger and Python warnings for the duration; we report what happened in our own words."""
    logging = diffusers.utils.logging
    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(previous)


def locate_weights(unet_folder: Path, names: tuple[str, str] = (SAFETENSORS_NAME, BIN_NAME)) -> list[Path]:
    """The weight files from_pretrained would read: one safetensors file, its shards, or the pickled .bin.

    names: the (safetensors, pickle) file names; transformers components use model.safetensors and pytorch_model.bin.
    """
    for name in names:
        if (unet_folder / name).exists():
            return [unet_folder / name]
        index = unet_folder / (name + _INDEX_SUFFIX)
        if index.exists():
            return _shards(index, unet_folder)
    raise ModelLoadError(
        f"diffusers model {unet_folder} has no weights ({names[0]} or {names[1]}, or a sharded "
        f"{names[0]}{_INDEX_SUFFIX}); save the model with save_pretrained"
    )


def _shards(index: Path, folder: Path) -> list[Path]:
    loaded = read_config_json(index, "weights index")
    weight_map = loaded.get("weight_map") if isinstance(loaded, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"weights index {index} has no \"weight_map\" of tensor names to shard files")
    names = []
    for name in weight_map.values():
        # Shards live beside the index: a path elsewhere is not what save_pretrained writes.
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise ModelLoadError(f"weights index {index} names shard {name!r:.60}; expected a file name in {folder}")
        if name not in names:
            names.append(name)
    return [folder / name for name in names]


class WeightsIndex:
    """name -> shape of every tensor in the weight files, and their total size; tensors only where reading them was free."""

    def __init__(self, files: list[Path], trust_checkpoint: bool):
        self.files, self.shapes, self.loaded = files, {}, {}
        self.total_bytes = 0
        for path in files:
            self.total_bytes += require_regular_file(path, "weights").st_size
            if path.suffix == ".safetensors":
                shapes = safetensors_shapes(path)
            else:
                # A zip .bin is memory-mapped: its tensors cost nothing until used.
                state = safe_torch_load(path, trust_checkpoint, what="weights", mmap=True)
                shapes = tensor_shapes(state, f"weights {path}")
                self.loaded.update(state)
            duplicated = set(shapes) & set(self.shapes)
            if duplicated:
                raise ModelLoadError(f"weights {path} repeat tensors of another shard: {sorted(duplicated)[:3]}")
            self.shapes.update(shapes)


def _int(config: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelLoadError(f"{where}: {key} = {value!r:.60} must be a non-negative integer")
    return value


def check_config_sizes(config: Mapping[str, Any], n_tensors: int, where: str) -> None:
    """Cheap checks on the keys that decide how many modules UNet2DModel builds, so that building it even on the
    meta device stays small: every level and every layer holds tensors, and the weights hold only `n_tensors`."""
    layers = _int(config, "layers_per_block", _DEFAULT_LAYERS_PER_BLOCK, where)
    levels = 0
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        value = config.get(key)
        if value is None:
            levels = max(levels, _DEFAULT_LEVELS)
            continue
        if not isinstance(value, list):
            raise ModelLoadError(f"{where}: {key} = {value!r:.60} must be a list")
        levels = max(levels, len(value))
    if (layers + 1) * max(levels, 1) > n_tensors:
        raise ModelLoadError(
            f"{where}: {levels} levels of {layers} layers per block ask for more layers than the weights' "
            f"{n_tensors} tensors can hold; the config does not describe these weights"
        )
    size = config.get("sample_size")
    sides = size if isinstance(size, list) else [size]
    if size is None or len(sides) not in (1, 2) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE for v in sides):
        raise ModelLoadError(
            f"{where}: sample_size = {size!r:.60} must be the image side (or [height, width]) from 1 to "
            f"{MAX_IMAGE_SIDE}; the image size cannot be told without it"
        )
    for key in ("in_channels", "out_channels"):
        value = config.get(key, 3)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{where}: {key} = {value!r:.60} must be a positive integer")


def config_image_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) of the model's input, from a config check_config_sizes accepted."""
    size = config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return int(config.get("in_channels", 3)), int(height), int(width)


def build_on_meta(model_class, config: Mapping[str, Any], where: str) -> torch.nn.Module:
    """The model on the meta device: every parameter's shape, no memory behind them."""
    try:
        with torch.device("meta"):
            return model_class.from_config(dict(config))
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types for configs it cannot build
        raise ModelLoadError(
            f"{where} does not describe a {model_class.__name__} diffusers can build "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None


def check_meta_forward(meta_model: torch.nn.Module, image_shape: tuple[int, int, int], where: str) -> None:
    """One forward pass on the meta device (shapes only, no arithmetic): a config that builds but cannot run on its
    own sample_size (a misplaced type, an odd size for its levels) is refused now rather than in the middle of scoring."""
    try:
        with torch.device("meta"), torch.no_grad():
            meta_model(torch.zeros(1, *image_shape), torch.zeros(1, dtype=torch.long), return_dict=False)
    except NotImplementedError:
        pass  # an operator without a meta kernel says nothing about the config
    except Exception as exc:  # noqa: BLE001 - whatever the layers raise, the config is at fault
        raise ModelLoadError(
            f"{where}: the configured UNet2DModel cannot run on {' x '.join(map(str, image_shape))} images "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); fix config.json"
        ) from None


def fix_legacy_names(meta_model: torch.nn.Module, state: dict) -> None:
    """Rename old attention-block keys (query/key/value/proj_attn) in place, as from_pretrained does."""
    fix = getattr(meta_model, "_fix_state_dict_keys_on_load", None)
    if fix is not None:
        fix(state)


def check_against_weights(meta_model: torch.nn.Module, index: WeightsIndex, where: str) -> None:
    """Strict comparison of the configured model's names and shapes with the weights', plus a size bound."""
    shapes = dict(index.shapes)
    fix_legacy_names(meta_model, shapes)
    expected = {name: tuple(t.shape) for name, t in meta_model.state_dict().items()}
    mismatch = key_mismatch(expected, shapes)
    if mismatch:
        raise ModelLoadError(f"{where}: the weights do not match the architecture in config.json "
                             f"({mismatch}); the folder's config and weights belong to different models")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ModelLoadError(f"{where}: shape mismatch for {name}: the weights have {tuple(shapes[name])}, "
                                 f"config.json describes {shape}; the folder's config and weights do not belong together")
    count = sum(t.numel() for t in meta_model.state_dict().values())
    if count * BYTES_PER_PARAMETER_MIN > index.total_bytes:
        raise ModelLoadError(f"{where}: config.json describes {count} parameters but the weights' "
                             f"{index.total_bytes} bytes cannot hold them (truncated or crafted files)")


def read_weights(index: WeightsIndex, meta_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor, legacy names fixed: safetensors files are read now, .bin files were mapped by the index."""
    state = dict(index.loaded)
    for path in index.files:
        if path.suffix == ".safetensors":
            state.update(read_safetensors(path))
    fix_legacy_names(meta_model, state)
    return state
