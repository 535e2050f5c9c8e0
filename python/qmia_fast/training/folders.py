"""The standard diffusers folders train-target writes: components by save_pretrained (safetensors), scheduler, model_index.json, conditioning.json."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from .. import atomic_io
from ..errors import require_extra

__all__ = ["export_component", "scheduler_config", "write_scheduler", "write_model_index",
           "write_conditioning", "CONDITIONING_NAME", "PIPELINES"]

CONDITIONING_NAME = "conditioning.json"
# The pipeline class named in model_index.json and the component names it has, per family.
PIPELINES = {
    "pixel": ("DDPMPipeline", ("unet", "scheduler")),
    # LDMPipeline's own layout: its autoencoder lives in vqvae/ (an AutoencoderKL here; diffusers loads it).
    "latent": ("LDMPipeline", ("vqvae", "unet", "scheduler")),
    "dit": ("DiTPipeline", ("transformer", "vae", "scheduler")),
    "text": ("StableDiffusionPipeline", ("vae", "text_encoder", "tokenizer", "unet", "scheduler")),
}


def export_component(module, folder: Path) -> None:
    """module.save_pretrained(folder) (safetensors), replacing an older copy without ever leaving a half-written one."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(tmp)  # diffusers and transformers both write safetensors by default
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    # This copy and the leftovers of a run killed while exporting (one run writes a folder at a time).
    for stale in folder.parent.glob(f".{folder.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)


def scheduler_config(objective: str, schedule_dict: Mapping[str, Any], *, clip_sample: bool) -> tuple[str, dict]:
    """(diffusers class name, its config): DDPMScheduler with our linear betas, or FlowMatchEulerDiscreteScheduler."""
    if objective == "flow":
        return "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": int(schedule_dict["T"]), "shift": 1.0}
    return "DDPMScheduler", {
        "num_train_timesteps": int(schedule_dict["T"]), "beta_start": float(schedule_dict["beta_1"]),
        "beta_end": float(schedule_dict["beta_T"]), "beta_schedule": "linear", "prediction_type": "epsilon",
        "variance_type": "fixed_small", "clip_sample": bool(clip_sample),
        # Sampling-time only (training uses every t); 1 is what StableDiffusionPipeline expects.
        "steps_offset": 1,
    }


def write_scheduler(out_dir: Path, class_name: str, config: Mapping[str, Any]) -> None:
    diffusers = require_extra("diffusers", "diffusers", "writing a diffusers target")
    export_component(getattr(diffusers, class_name)(**config), Path(out_dir) / "scheduler")


def write_model_index(out_dir: Path, family: str, classes: Mapping[str, tuple[str, str]],
                      extra: Mapping[str, Any] | None = None) -> None:
    """model_index.json as the pipeline's save_pretrained writes it: component -> [library, class]."""
    diffusers = require_extra("diffusers", "diffusers", "writing a diffusers target")
    pipeline, components = PIPELINES[family]
    index: dict[str, Any] = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    for name in components:
        index[name] = list(classes[name])
    if family == "text":
        # StableDiffusionPipeline's optional parts, absent as in a folder saved without them.
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                      "image_encoder": [None, None], "requires_safety_checker": False})
    index.update(extra or {})
    atomic_io.write_json(Path(out_dir) / "model_index.json", index)


def write_conditioning(out_dir: Path, conditioning: Mapping[str, Any]) -> None:
    atomic_io.write_json(Path(out_dir) / CONDITIONING_NAME, dict(conditioning))
