"""Loader for diffusers models, fully offline: pixel or latent, unconditional, class- or text-conditional, DDPM or flow matching, with an optional LoRA."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelLoadError, require_extra
from ..schedule import linear_schedule
from .conditions import (
    ClassLabelCall, TextStatesCall, class_conditioning, names_from_id2label, read_conditioning_json, text_conditioning,
)
from .config_io import read_config_json
from .denoiser_families import DenoiserPlan, prepare_denoiser
from .diffusers_components import jsonable_config, read_component_config
from .diffusers_weights import quiet_diffusers
from .latent_codec import VaeLatent, downsampling, latent_shape, prepare_vae
from .lora import merge_lora, plan_lora
from .pipeline_folder import PipelineLayout, check_model_index, find_layout, find_scheduler_config
from .scheduler_kinds import ResolvedScheduler, resolve_scheduler
from .text_encoder import ClipTextEncoder, load_tokenizer, prepare_text_encoder
from .wrapper import EpsModel

__all__ = ["load_diffusers", "is_diffusers_folder", "find_unet_folder"]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = read_config_json(path)
    except ModelLoadError:
        return None
    return value if isinstance(value, dict) else None


def is_diffusers_folder(folder: Path) -> bool:
    if (folder / "model_index.json").is_file() or any((folder / role / "config.json").is_file()
                                                      for role in ("unet", "transformer")):
        return True
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    return bool(config) and ("_class_name" in config or "_diffusers_version" in config)


def find_unet_folder(folder: Path) -> Path:
    """The denoiser's folder: unet/ or transformer/ of a pipeline, or the folder itself."""
    return find_layout(folder).denoiser


def _scheduler_settings(config, layout: PipelineLayout) -> tuple[dict[str, Any], str | None]:
    if isinstance(config, Mapping):
        return dict(config), "config dict"
    if config is not None:
        path = Path(config)
        if path.is_dir():
            path = path / "scheduler_config.json"
        if not path.exists():
            raise ModelLoadError(f"scheduler config {path} is missing; pass a scheduler_config.json")
    else:
        path = find_scheduler_config(layout)
        if path is None:
            return {}, None
    settings = read_config_json(path, "scheduler config")
    if not isinstance(settings, dict):
        raise ModelLoadError(f"scheduler config {path} must hold a JSON object")
    return settings, str(path)


def _call_diffusers(net, x, t, cond=None):
    return net(x, t, return_dict=False)[0]


def _conditioning(plan: DenoiserPlan, layout: PipelineLayout, where: str):
    declared = read_conditioning_json(layout.root)
    if plan.kind == "unconditional":
        if declared is not None:
            raise ModelLoadError(f"conditioning file {declared['_path']} describes a {declared['kind']}-conditional "
                                 f"model, but {where} is unconditional; remove the file or pass the matching model")
        return None
    if plan.kind == "text":
        return text_conditioning(declared, where)
    index = layout.model_index or {}
    names = names_from_id2label(index.get("id2label"), plan.num_classes, f"pipeline index {layout.root}") \
        if plan.num_classes is not None and declared is None else None
    return class_conditioning(declared, num_classes=plan.num_classes, rows=plan.class_rows, class_names=names,
                              where=where)


def load_diffusers(path: str | Path, config=None, trust_checkpoint: bool = False, lora=None) -> EpsModel:
    """Load a diffusers model folder as an EpsModel; the schedule and prediction type come from its scheduler config.

    Layouts: a bare UNet2DModel / DiT folder (config.json + weights, a scheduler_config.json beside
    it or in ../scheduler/), or a pipeline folder with unet/ or transformer/, optionally vae/
    (AutoencoderKL) or vqvae/ (VQModel), text_encoder/ + tokenizer/ (CLIP), scheduler/,
    model_index.json and conditioning.json. Every config is checked against its weights' index on
    the meta device before any weights are read; diffusers' own logging stays silent.
    lora: a LoRA weights file (diffusers'/PEFT's pytorch_lora_weights.safetensors) merged into the
    denoiser (and the text encoder where the file has weights for it).
    """
    folder = Path(path)
    if folder.is_file():  # a config.json or weights file inside the model folder
        folder = folder.parent
    if not folder.is_dir():
        raise ModelLoadError(f"diffusers model {folder} does not exist; pass the model or pipeline folder")
    layout = find_layout(folder)
    role = layout.denoiser_role
    den_config = read_component_config(layout.denoiser, role if layout.is_pipeline else "diffusers model")
    check_model_index(layout, role, den_config.get("_class_name"))
    vae_config = read_component_config(layout.vae, layout.vae_role) if layout.vae else None
    if vae_config is not None:
        check_model_index(layout, layout.vae_role, vae_config.get("_class_name"))
    te_config = read_component_config(layout.text_encoder, "text_encoder") if layout.text_encoder else None
    settings, scheduler_source = _scheduler_settings(config, layout)
    if scheduler_source is None:
        resolved = ResolvedScheduler(linear_schedule(), "epsilon", "DDPMScheduler")
    else:
        resolved = resolve_scheduler(settings, scheduler_source)
        if config is None:
            check_model_index(layout, "scheduler", settings.get("_class_name"))
    lora_path = None if lora is None else Path(lora).expanduser()

    diffusers = require_extra("diffusers", "diffusers", "loading a diffusers model")
    with quiet_diffusers(diffusers):
        _check_pairing(den_config.get("_class_name"), layout)
        plan = prepare_denoiser(layout.denoiser, role, den_config, diffusers, trust_checkpoint)
        where = plan.prepared.where
        conditioning = _conditioning(plan, layout, where)
        vae = prepare_vae(layout.vae, vae_config, diffusers, trust_checkpoint, layout.vae_role) if layout.vae else None
        image_shape = _image_shape(plan, vae)
        text = prepare_text_encoder(layout.text_encoder, te_config, trust_checkpoint) if te_config else None
        if text is not None and int(text.config.get("hidden_size", 512)) != plan.cross_attention_dim:
            raise ModelLoadError(f"{where}: cross_attention_dim = {plan.cross_attention_dim} but the text encoder's "
                                 f"hidden_size is {text.config.get('hidden_size', 512)}; the components belong to "
                                 "different models")
        tokenizer = None
        if text is not None:
            tokenizer = load_tokenizer(layout.tokenizer, int(text.config.get("max_position_embeddings", 77)))
            declared_length = (read_conditioning_json(layout.root) or {}).get("max_length")
            if declared_length is not None and declared_length != tokenizer[1]:
                raise ModelLoadError(f"conditioning file in {layout.root}: max_length = {declared_length!r:.20}, but the "
                                     f"tokenizer takes {tokenizer[1]} tokens; fix one of them")
        # diffusers' LoRA files prefix the denoiser's keys with its pipeline role.
        lora_targets = {"transformer" if plan.timestep_keyword else "unet": plan.prepared.meta}
        if text is not None:
            lora_targets["text_encoder"] = text.meta
        lora_plan = plan_lora(lora_path, lora_targets, next(iter(lora_targets))) if lora_path is not None else None

        net = plan.prepared.load()
        latent = VaeLatent(vae.load(), vae.class_name) if vae is not None else None
        text_encoder = None
        if text is not None:
            text_encoder = ClipTextEncoder(text.load(), *tokenizer)
        if lora_plan is not None:
            modules = {next(iter(lora_targets)): net}
            if text_encoder is not None:
                modules["text_encoder"] = text_encoder.model
            merge_lora(lora_plan, modules)

    if scheduler_source is None:
        # Said only once the model has loaded: an error in the weights should not come after a guess.
        warnings.warn(
            f"no scheduler config found for {folder}; assuming DDPM linear betas 1e-4..0.02 over 1000 steps "
            "and epsilon prediction. Pass --model-config scheduler_config.json if that is wrong.",
            UserWarning,
            stacklevel=3,
        )
    described = _describe(folder, layout, plan, net, resolved, settings, scheduler_source, conditioning,
                          latent, vae, text_encoder, text, image_shape)
    if lora_plan is not None:
        described["lora"] = lora_plan.describe(str(folder))
    call = _call_diffusers
    if plan.kind == "class":
        call = ClassLabelCall(conditioning, plan.timestep_keyword)
    elif plan.kind == "text":
        call = TextStatesCall(text_encoder, plan.cross_attention_dim)
    return EpsModel(net, resolved.schedule, image_shape, described, format="diffusers",
                    prediction_type=resolved.prediction_type, call=call, conditioning=conditioning, latent=latent,
                    input_shape=plan.input_shape, text_encoder=text_encoder)


def _check_pairing(class_name, layout: PipelineLayout) -> None:
    """Text encoder and tokenizer come together, and only with a text-conditioned denoiser, which needs them."""
    text_unet = class_name == "UNet2DConditionModel"
    if layout.text_encoder is not None and layout.tokenizer is None:
        raise ModelLoadError(f"diffusers pipeline {layout.root} has text_encoder/ but no tokenizer/; "
                             "save the pipeline's tokenizer beside it")
    if layout.tokenizer is not None and layout.text_encoder is None:
        raise ModelLoadError(f"diffusers pipeline {layout.root} has tokenizer/ but no text_encoder/; "
                             "save the pipeline's text encoder beside it")
    if text_unet and layout.text_encoder is None:
        raise ModelLoadError(f"diffusers model {layout.denoiser} is a UNet2DConditionModel (text-conditioned) but "
                             f"{layout.root} has no text_encoder/ and tokenizer/; pass the whole "
                             "Stable-Diffusion-style pipeline folder")
    if layout.text_encoder is not None and not text_unet:
        raise ModelLoadError(f"diffusers pipeline {layout.root} has a text encoder but its {class_name!r:.60} "
                             "takes no text; remove text_encoder/ and tokenizer/ or pass the matching denoiser")


def _image_shape(plan: DenoiserPlan, vae) -> tuple[int, int, int]:
    """Pixels the data must have: the denoiser's input, or what the VAE encodes into exactly that latent shape."""
    if vae is None:
        return plan.input_shape
    factor = downsampling(vae.config)
    channels, height, width = plan.input_shape
    image_shape = (int(vae.config.get("in_channels", 3)), height * factor, width * factor)
    found = latent_shape(vae, image_shape)
    if found is not None and found != plan.input_shape:
        raise ModelLoadError(f"{vae.where}: the autoencoder turns {' x '.join(map(str, image_shape))} images into "
                             f"{' x '.join(map(str, found))} latents but the denoiser takes "
                             f"{' x '.join(map(str, plan.input_shape))}; the components belong to different models")
    return image_shape


def _describe(folder, layout, plan, net, resolved, settings, scheduler_source, conditioning, latent, vae, text_encoder,
              text, image_shape) -> dict[str, Any]:
    denoiser_config = jsonable_config(net.config)
    described: dict[str, Any] = {
        "format": "diffusers",
        "path": str(folder),
        "layout": "pipeline" if layout.is_pipeline else "model folder",
        "denoiser": {"role": plan.prepared.role, "class": plan.prepared.class_name, "path": str(layout.denoiser),
                     "config": denoiser_config},
        "scheduler_source": scheduler_source or "default linear",
        "scheduler": {"class": resolved.class_name, "config": jsonable_config(settings)},
        "schedule": resolved.schedule.to_dict(),
        "prediction_type": resolved.prediction_type,
        "learned_variance": plan.out_channels == 2 * plan.input_shape[0],
        "conditioning": None if conditioning is None else conditioning.to_dict(),
        "image_shape": list(image_shape),
        "input_shape": list(plan.input_shape),
        "components": {},
    }
    if plan.prepared.class_name.startswith("UNet"):
        described["unet_config"] = denoiser_config
    if latent is not None:
        described["components"][layout.vae_role] = {"path": str(layout.vae), "config": jsonable_config(vae.config),
                                                    **latent.describe()}
    if text_encoder is not None:
        described["components"]["text_encoder"] = {"path": str(layout.text_encoder),
                                                   "config": jsonable_config(text.config), **text_encoder.describe()}
        described["components"]["tokenizer"] = {"path": str(layout.tokenizer),
                                                "class": type(text_encoder.tokenizer).__name__}
    return described
