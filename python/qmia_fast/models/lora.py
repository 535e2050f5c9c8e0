"""LoRA fine-tunes merged into a loaded model: diffusers'/PEFT's weight files checked against the layers on the meta device, then W += scale * B @ A."""
from __future__ import annotations

import collections
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError, require_extra
from .checkpoint_io import read_safetensors, safe_torch_load, safetensors_shapes, tensor_shapes
from .config_io import require_regular_file

__all__ = ["LoraPlan", "plan_lora", "merge_lora", "file_sha256"]

# diffusers' training scripts write PEFT names for the denoiser (lora_A/lora_B) and, through
# convert_state_dict_to_diffusers, the older names for text encoders; both are read.
_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
          (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"))
# diffusers' attention-processor files: ...attn1.processor.to_q_lora.down.weight
_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_UNSUPPORTED = (("lora_magnitude_vector", "DoRA"), ("dora_scale", "DoRA"), ("lora_embedding_", "embedding LoRA"),
                (".lora_B.bias", "LoRA with a bias"), ("hada_", "LoHa"), ("lokr_", "LoKr"))
_METADATA_KEY = "lora_adapter_metadata"


@dataclass
class _Layer:
    down: str | None = None   # key of A (rank x in)
    up: str | None = None     # key of B (out x rank)
    alpha_key: str | None = None


@dataclass
class LoraPlan:
    """A checked LoRA file: per target ("unet", "transformer", "text_encoder"), layer name -> (A key, B key, scale)."""

    path: Path
    sha256: str
    layers: dict[str, dict[str, tuple[str, str, float]]] = field(default_factory=dict)

    def describe(self, base: str) -> dict[str, Any]:
        return {"file": str(self.path), "sha256": self.sha256, "base": base,
                "layers": {target: len(layers) for target, layers in self.layers.items()}}


def file_sha256(path: Path) -> str:
    """sha256 of the LoRA file (read as a regular file only), recorded in the model's config and the report."""
    from ..safe_read import sha256_regular

    return sha256_regular(path, "LoRA file", ModelLoadError)


def _read_index(path: Path):
    """(name -> shape, metadata dict, reader of named tensors) without reading the weights."""
    info = require_regular_file(path, "LoRA file")
    if info.st_size == 0:
        raise ModelLoadError(f"LoRA file {path} is empty; pass the pytorch_lora_weights.safetensors a training run wrote")
    if path.suffix == ".safetensors":
        shapes = safetensors_shapes(path, "LoRA file")
        st = require_extra("safetensors", "safetensors", f"reading {path}")
        try:
            with st.safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get(_METADATA_KEY)
        except Exception as exc:  # noqa: BLE001 - already read once by safetensors_shapes
            raise ModelLoadError(f"LoRA file {path} is corrupt ({type(exc).__name__})") from None
        try:
            metadata = json.loads(raw) if raw else {}
        except ValueError:
            raise ModelLoadError(f"LoRA file {path}: its {_METADATA_KEY} is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise ModelLoadError(f"LoRA file {path}: its {_METADATA_KEY} must be a JSON object")
        return shapes, metadata, lambda: read_safetensors(path, "LoRA file")
    if path.suffix in (".bin", ".pt", ".pth"):
        state = safe_torch_load(path, False, what="LoRA file", mmap=True,
                                unsafe_advice="Re-save it with diffusers' save_lora_weights (safetensors)")
        return tensor_shapes(state, f"LoRA file {path}"), {}, lambda: state
    raise ModelLoadError(f"LoRA file {path} must be a .safetensors (or .bin) weights file such as "
                         "pytorch_lora_weights.safetensors")


def _split_target(key: str, targets: Mapping[str, nn.Module], default: str) -> tuple[str, str]:
    head, _, rest = key.partition(".")
    if head in targets and rest:
        return head, rest
    if head.startswith("text_encoder") or head in ("unet", "transformer"):
        have = ", ".join(sorted(targets))
        raise ModelLoadError(f"LoRA weights for {head!r} ({key:.80}) fit no component of this model ({have}); "
                             "pass the LoRA trained for this model")
    return default, key


def _layer_names(module: nn.Module) -> dict[str, nn.Module]:
    names = dict(module.named_modules())
    # transformers 4 nests CLIPTextModel under text_model., transformers 5 does not: accept either spelling.
    for name, layer in list(names.items()):
        if name.startswith("text_model."):
            names.setdefault(name[len("text_model."):], layer)
        elif name:
            names.setdefault("text_model." + name, layer)
    return names


def _group(shapes: Mapping[str, tuple], targets: Mapping[str, nn.Module], default: str, path: Path):
    groups: dict[str, dict[str, _Layer]] = collections.defaultdict(lambda: collections.defaultdict(_Layer))
    for key in shapes:
        if key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")):
            raise ModelLoadError(f"LoRA file {path} is in the kohya / A1111 format ({key:.60}); convert it to diffusers' "
                                 "format (load_lora_weights, then save_lora_weights) and pass that file")
        for needle, kind in _UNSUPPORTED:
            if needle in key:
                raise ModelLoadError(f"LoRA file {path} holds {kind} weights ({key:.80}); only plain LoRA "
                                     "(A and B matrices, optional alpha) can be merged")
        target, name = _split_target(key, targets, default)
        processor = _PROCESSOR.match(name)
        if processor:
            base, proj, side = processor.groups()
            layer = groups[target][f"{base}.{proj}" + (".0" if proj == "to_out" else "")]
            setattr(layer, "down" if side == "down" else "up", key)
            continue
        if name.endswith(".alpha"):
            groups[target][name[: -len(".alpha")]].alpha_key = key
            continue
        for down, up in _PAIRS:
            if name.endswith(down):
                groups[target][name[: -len(down)]].down = key
                break
            if name.endswith(up):
                groups[target][name[: -len(up)]].up = key
                break
        else:
            raise ModelLoadError(f"LoRA file {path}: {key:.100} is not a LoRA weight (expected lora_A/lora_B, "
                                 "lora.down/lora.up or alpha keys); pass the pytorch_lora_weights file of a LoRA run")
    return groups


def _metadata_for(metadata: Mapping[str, Any], target: str, default: str) -> dict[str, Any]:
    prefix = target + "."
    scoped = {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)}
    if not scoped and target == default:
        scoped = {k: v for k, v in metadata.items() if "." not in k}
    return scoped


def _pattern_value(patterns, name: str, path: Path):
    if not isinstance(patterns, Mapping):
        return None
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", name):
                return value
        except re.error:
            raise ModelLoadError(f"LoRA file {path}: metadata pattern {pattern!r:.60} is not a valid expression") from None
    return None


def _scale(name: str, rank: int, alpha_value, config: Mapping[str, Any], fallback_alpha, path: Path) -> float:
    if config:
        if config.get("use_dora"):
            raise ModelLoadError(f"LoRA file {path} is a DoRA adapter (use_dora); only plain LoRA can be merged")
        declared_rank = _pattern_value(config.get("rank_pattern"), name, path) or config.get("r", rank)
        if declared_rank != rank:
            raise ModelLoadError(f"LoRA file {path}: {name} has rank {rank} but the file's metadata says {declared_rank}")
        alpha = _pattern_value(config.get("alpha_pattern"), name, path)
        alpha = config.get("lora_alpha", rank) if alpha is None else alpha
        root = math.sqrt(rank) if config.get("use_rslora") else rank
    else:
        alpha = alpha_value if alpha_value is not None else (fallback_alpha if fallback_alpha is not None else rank)
        root = rank
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ModelLoadError(f"LoRA file {path}: alpha of {name} = {alpha!r:.40} must be a finite number")
    return float(alpha) / root


def plan_lora(path, targets: Mapping[str, nn.Module], default: str) -> LoraPlan:
    """Check a LoRA file against the target modules (meta-device copies suffice): every key names a Linear or Conv2d
    layer of one target with shapes that fit it. `default` is the target of keys without a component prefix."""
    path = Path(path).expanduser()
    shapes, metadata, read = _read_index(path)
    groups = _group(shapes, targets, default, path)
    if not groups:
        raise ModelLoadError(f"LoRA file {path} holds no LoRA weights; pass the pytorch_lora_weights file of a LoRA run")
    alphas = {}
    if any(layer.alpha_key for layers in groups.values() for layer in layers.values()):
        tensors = read()
        alphas = {k: tensors[k] for layers in groups.values() for layer in layers.values()
                  if (k := layer.alpha_key) is not None}
        alphas = {k: float(v.reshape(-1)[0]) if v.numel() == 1 else None for k, v in alphas.items()}
    plan = LoraPlan(path, file_sha256(path))
    for target, layers in groups.items():
        modules = _layer_names(targets[target])
        config = _metadata_for(metadata, target, default)
        found = [alphas.get(layer.alpha_key) for layer in layers.values() if layer.alpha_key]
        common = collections.Counter(found).most_common(1)[0][0] if found else None
        planned = {}
        for name, layer in layers.items():
            if layer.down is None or layer.up is None:
                raise ModelLoadError(f"LoRA file {path}: layer {name:.80} has {'no A' if layer.down is None else 'no B'} "
                                     "matrix; the file is incomplete")
            if name not in modules:
                raise ModelLoadError(f"LoRA file {path}: {name:.100} matches no layer of the {target}; the LoRA was "
                                     "trained for another model")
            rank = _check_shapes(modules[name], shapes[layer.down], shapes[layer.up], f"LoRA file {path}: {name}")
            alpha = alphas.get(layer.alpha_key) if layer.alpha_key else None
            if layer.alpha_key and alpha is None:
                raise ModelLoadError(f"LoRA file {path}: {layer.alpha_key:.80} must hold one number")
            planned[name] = (layer.down, layer.up, _scale(name, rank, alpha, config, common, path))
        plan.layers[target] = planned
    plan._read = read  # type: ignore[attr-defined]
    return plan


def _check_shapes(module: nn.Module, down: tuple, up: tuple, where: str) -> int:
    if isinstance(module, nn.Linear):
        expected_down, expected_up = (None, module.in_features), (module.out_features, None)
        ok = len(down) == 2 and len(up) == 2 and down[1] == module.in_features and up[0] == module.out_features
    elif isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ModelLoadError(f"{where}: LoRA on grouped convolutions is not supported")
        ok = (len(down) == 4 and len(up) == 4 and tuple(down[1:]) == (module.in_channels, *module.kernel_size)
              and up[0] == module.out_channels and tuple(up[2:]) == (1, 1))
        expected_down, expected_up = (None, module.in_channels, *module.kernel_size), (module.out_channels, None, 1, 1)
    else:
        raise ModelLoadError(f"{where} is a {type(module).__name__}; LoRA merges into Linear and Conv2d layers only")
    if not ok or down[0] != up[1] or down[0] < 1:
        def show(shape):
            return "(" + ", ".join("r" if v is None else str(v) for v in shape) + ")"
        raise ModelLoadError(f"{where}: A {tuple(down)} and B {tuple(up)} do not fit the layer (A {show(expected_down)}, "
                             f"B {show(expected_up)}, one rank r); the LoRA was trained for another model")
    return int(down[0])


def merge_lora(plan: LoraPlan, targets: Mapping[str, nn.Module]) -> None:
    """W += scale * B @ A for every planned layer, in float64 and rounded once into the weight's dtype."""
    tensors = plan._read()  # type: ignore[attr-defined]
    with torch.no_grad():
        for target, layers in plan.layers.items():
            modules = _layer_names(targets[target])
            for name, (down_key, up_key, scale) in layers.items():
                weight = modules[name].weight
                down, up = tensors[down_key].double(), tensors[up_key].double()
                if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
                    raise ModelLoadError(f"LoRA file {plan.path}: the weights of {name:.80} are not finite")
                if down.dim() == 2:
                    delta = up @ down
                else:
                    delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
                weight.copy_((weight.double() + scale * delta).to(weight.dtype))
