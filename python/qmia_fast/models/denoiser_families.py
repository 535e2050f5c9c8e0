"""The diffusers denoisers qmia-fast scores (UNet2DModel, UNet2DConditionModel, DiT), each checked on the meta device: input shape, condition kind, label table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ModelLoadError
from .diffusers_components import (
    PreparedComponent, check_dit_sizes, check_unet_condition_sizes, prepare_component, run_on_meta,
)
from .diffusers_weights import check_config_sizes, config_image_shape

__all__ = ["DenoiserPlan", "prepare_denoiser", "DENOISER_CLASSES"]

DENOISER_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "Transformer2DModel")
_DIT = ("DiTTransformer2DModel", "Transformer2DModel")
# DiT's label table, one per block; every block's has the same rows.
_DIT_TABLE = "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"


@dataclass
class DenoiserPlan:
    """A checked denoiser: what it takes (input_shape, kind of condition) and how it is called."""

    prepared: PreparedComponent
    input_shape: tuple[int, int, int]
    out_channels: int
    kind: str                          # "unconditional", "class" or "text"
    class_rows: int | None = None      # rows of the label embedding table (None: labels are not looked up)
    num_classes: int | None = None     # what the config says, before conditioning.json
    timestep_keyword: bool = False     # DiT takes timestep= as a keyword
    cross_attention_dim: int | None = None


def _refuse(where: str, what: str) -> None:
    raise ModelLoadError(f"{where}: {what}")


def _unet_kind(config: dict, where: str) -> tuple[str, int | None]:
    """UNet2DModel: unconditional, or class-conditional through an embedding table or sinusoidal label embedding."""
    embed_type, count = config.get("class_embed_type"), config.get("num_class_embeds")
    if embed_type is None and count is None:
        return "unconditional", None
    if embed_type is None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            _refuse(where, f"num_class_embeds = {count!r:.40} must be a positive class count")
        return "class", count
    if embed_type == "timestep":
        return "class", None
    _refuse(where, f"class_embed_type = {embed_type!r:.40} takes embeddings, not class labels; only label-conditioned "
                   "UNet2DModels (num_class_embeds, or class_embed_type 'timestep') are supported")
    return "", None  # unreachable


def _check_text_unet(config: dict, where: str) -> None:
    for key, what in (("addition_embed_type", "added conditions (SDXL-style time/text ids)"),
                      ("class_embed_type", "a class embedding beside the text"),
                      ("num_class_embeds", "a class embedding beside the text"),
                      ("encoder_hid_dim", "a projection of another encoder's states"),
                      ("encoder_hid_dim_type", "a projection of another encoder's states")):
        if config.get(key) is not None:
            _refuse(where, f"{key} = {config[key]!r:.40} asks for {what}; only text-conditioned UNets "
                           "(Stable Diffusion 1.x/2.x) are supported")


def _check_dit(class_name: str, config: dict, where: str) -> None:
    if class_name == "Transformer2DModel":
        if config.get("patch_size") is None or config.get("norm_type", "layer_norm") != "ada_norm_zero" \
                or config.get("cross_attention_dim") is not None:
            _refuse(where, f"this Transformer2DModel (patch_size {config.get('patch_size')!r:.20}, norm_type "
                           f"{config.get('norm_type')!r:.30}, cross_attention_dim {config.get('cross_attention_dim')!r:.20}) "
                           "is not a DiT; only class-conditional DiTs (patch_size, norm_type 'ada_norm_zero') are supported")
    count = config.get("num_embeds_ada_norm", 1000 if class_name == "DiTTransformer2DModel" else None)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        _refuse(where, f"num_embeds_ada_norm = {count!r:.40} must be the DiT's positive class count")


def prepare_denoiser(folder: Path, role: str, config: dict, diffusers, trust_checkpoint: bool) -> DenoiserPlan:
    """Check the denoiser's config against its weights on the meta device, and one forward pass of its input shape."""
    where = f"{role} {folder}"
    class_name = config.get("_class_name", "UNet2DModel" if role in ("unet", "model") else None)
    if class_name not in DENOISER_CLASSES:
        _refuse(f"diffusers model {folder}", f"the denoiser is a {class_name!r:.60}; supported: "
                                             f"{', '.join(DENOISER_CLASSES)}")
    model_class = getattr(diffusers, class_name)
    plan_kw: dict[str, Any] = {}
    if class_name == "UNet2DModel":
        kind, count = _unet_kind(config, where)
        sizes: Callable = check_config_sizes
        plan_kw.update(kind=kind, num_classes=count)
    elif class_name == "UNet2DConditionModel":
        _check_text_unet(config, where)
        sizes = check_unet_condition_sizes
        plan_kw.update(kind="text", cross_attention_dim=config.get("cross_attention_dim", 1280))
    else:
        _check_dit(class_name, config, where)
        sizes = check_dit_sizes
        plan_kw.update(kind="class", num_classes=config.get("num_embeds_ada_norm", 1000), timestep_keyword=True)
    prepared = prepare_component(role if role != "model" else "diffusers model", folder, model_class, config,
                                 trust_checkpoint, check_sizes=sizes)
    if class_name in _DIT:
        side = config.get("sample_size", 32)
        input_shape = (int(config.get("in_channels", 4)), side, side)
        rows = prepared.index.shapes.get(_DIT_TABLE, (None,))[0]
    else:
        input_shape = config_image_shape(config)
        table = prepared.index.shapes.get("class_embedding.weight") if plan_kw["kind"] == "class" else None
        rows = table[0] if table is not None else None
    plan = DenoiserPlan(prepared, input_shape, 0, class_rows=rows, **plan_kw)
    out = run_on_meta(lambda: _meta_call(prepared.meta, plan), f"{prepared.where}/config.json",
                      f"the configured {class_name} cannot run on {' x '.join(map(str, input_shape))} images")
    if out is not None and tuple(out.shape[2:]) != tuple(input_shape[1:]):
        _refuse(where, f"the configured {class_name} turns {' x '.join(map(str, input_shape))} inputs into "
                       f"{' x '.join(map(str, out.shape[1:]))} predictions; fix sample_size or patch_size in config.json")
    channels = int(out.shape[1]) if out is not None else int(config.get("out_channels") or input_shape[0])
    if channels not in (input_shape[0], 2 * input_shape[0]):
        _refuse(where, f"out_channels = {channels} fits neither the prediction ({input_shape[0]}) nor prediction + "
                       f"learned variance ({2 * input_shape[0]})")
    plan.out_channels = channels
    return plan


def _meta_call(meta, plan: DenoiserPlan):
    x, t = torch.zeros(1, *plan.input_shape), torch.zeros(1, dtype=torch.long)
    if plan.kind == "text":
        return meta(x, t, encoder_hidden_states=torch.zeros(1, 1, plan.cross_attention_dim), return_dict=False)[0]
    if plan.kind == "class":
        labels = torch.zeros(1, dtype=torch.long)
        if plan.timestep_keyword:
            return meta(x, timestep=t, class_labels=labels, return_dict=False)[0]
        return meta(x, t, class_labels=labels, return_dict=False)[0]
    return meta(x, t, return_dict=False)[0]
