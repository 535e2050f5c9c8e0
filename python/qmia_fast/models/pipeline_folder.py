"""Where a diffusers model's components are: a bare denoiser folder or a pipeline folder (unet/ or transformer/, vae/ or vqvae/, text encoder, scheduler)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelLoadError
from .config_io import read_config_json

__all__ = ["PipelineLayout", "find_layout", "check_model_index", "find_scheduler_config", "DENOISER_ROLES", "VAE_ROLES"]

DENOISER_ROLES = ("unet", "transformer")
VAE_ROLES = ("vae", "vqvae")
_KNOWN = DENOISER_ROLES + VAE_ROLES + ("text_encoder", "tokenizer", "scheduler")
# Pipeline parts that never touch the denoiser's prediction (filters and image preprocessors).
_IGNORED = ("safety_checker", "feature_extractor", "image_encoder", "image_processor")
# Components of pipelines with more conditioning than one CLIP text encoder (SDXL, SD3, unCLIP ...).
_REFUSED_FOLDERS = ("text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3", "prior", "bert")


@dataclass
class PipelineLayout:
    """The folders of one model: `denoiser` always; the others where the folder has them."""

    root: Path
    denoiser_role: str           # "unet", "transformer", or "model" for a bare denoiser folder
    denoiser: Path
    vae_role: str | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    model_index: dict | None = None

    @property
    def is_pipeline(self) -> bool:
        return self.denoiser_role != "model"


def _component_dir(root: Path, role: str) -> Path | None:
    folder = root / role
    if not folder.is_dir():
        return None
    return folder


def _needs_config(folder: Path, role: str, file_name: str = "config.json") -> Path:
    if not (folder / file_name).is_file():
        raise ModelLoadError(f"{role}/ of {folder.parent} has no {file_name}; save the component with save_pretrained "
                             f"or remove the folder")
    return folder


def find_layout(root: Path) -> PipelineLayout:
    """The components of a model folder; a pipeline needs unet/ or transformer/ (not both), at most one autoencoder."""
    index = None
    if (root / "model_index.json").exists():
        index = read_config_json(root / "model_index.json", "pipeline index")
        if not isinstance(index, dict):
            raise ModelLoadError(f"pipeline index {root / 'model_index.json'} must hold a JSON object")
    for name in _REFUSED_FOLDERS:
        named = isinstance(index, dict) and isinstance(index.get(name), list) and any(index[name])
        if (root / name).is_dir() or named:
            raise ModelLoadError(f"diffusers pipeline {root} has a {name} component; pipelines with more than one "
                                 "CLIP text encoder (SDXL, SD3, unCLIP) are not supported")
    denoisers = [role for role in DENOISER_ROLES if _component_dir(root, role)]
    if len(denoisers) > 1:
        raise ModelLoadError(f"diffusers pipeline {root} has both unet/ and transformer/; keep the one denoiser")
    if not denoisers:
        named = [role for role in DENOISER_ROLES if isinstance(index, dict) and isinstance(index.get(role), list)
                 and any(index[role])]
        if not named and (root / "config.json").is_file():
            layout = PipelineLayout(root, "model", root)
            _extras_of_bare_folder(root)
            return layout
        if named:
            raise ModelLoadError(f"pipeline index {root / 'model_index.json'} names a {named[0]} component but {root} "
                                 f"has no {named[0]}/ folder; the pipeline is incomplete")
        raise ModelLoadError(f"diffusers model {root}: found neither unet/ nor transformer/ (nor a bare model's "
                             "config.json); pass a UNet2DModel/DiT folder or a pipeline folder saved with save_pretrained")
    role = denoisers[0]
    layout = PipelineLayout(root, role, _needs_config(root / role, role), model_index=index)
    vaes = [r for r in VAE_ROLES if _component_dir(root, r)]
    if len(vaes) > 1:
        raise ModelLoadError(f"diffusers pipeline {root} has both vae/ and vqvae/; keep the one autoencoder")
    if vaes:
        layout.vae_role, layout.vae = vaes[0], _needs_config(root / vaes[0], vaes[0])
    if _component_dir(root, "text_encoder"):
        layout.text_encoder = _needs_config(root / "text_encoder", "text_encoder")
    if _component_dir(root, "tokenizer"):
        layout.tokenizer = root / "tokenizer"
    _check_index_components(layout)
    return layout


def _extras_of_bare_folder(root: Path) -> None:
    for role in VAE_ROLES + ("text_encoder", "tokenizer"):
        if (root / role).is_dir():
            raise ModelLoadError(f"diffusers model {root} has {role}/ beside a config.json but no unet/ or "
                                 "transformer/; put the denoiser in its own subfolder as save_pretrained does")


def _check_index_components(layout: PipelineLayout) -> None:
    index = layout.model_index or {}
    present = {role: None for role in _KNOWN}
    present.update({layout.denoiser_role: layout.denoiser, "text_encoder": layout.text_encoder,
                    "tokenizer": layout.tokenizer})
    if layout.vae_role:
        present[layout.vae_role] = layout.vae
    if (layout.root / "scheduler").is_dir():
        present["scheduler"] = layout.root / "scheduler"
    for name, entry in index.items():
        if name.startswith("_") or name in _IGNORED or not isinstance(entry, list) or not any(entry):
            continue
        if name not in _KNOWN:
            raise ModelLoadError(f"pipeline index {layout.root / 'model_index.json'} names a component {name!r:.40} "
                                 f"({entry[-1]!r:.40}) qmia-fast cannot use; supported: {', '.join(_KNOWN)}")
        if present[name] is None:
            raise ModelLoadError(f"pipeline index {layout.root / 'model_index.json'} names a {name} component but "
                                 f"{layout.root} has no {name}/ folder; the pipeline is incomplete")


def check_model_index(layout: PipelineLayout, role: str, class_name: str | None) -> None:
    """A component's class must be the one model_index.json names for it (when it names one)."""
    entry = (layout.model_index or {}).get(role)
    if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], str) or class_name is None:
        return
    if entry[1] != class_name:
        raise ModelLoadError(f"pipeline index {layout.root / 'model_index.json'} names {role} a {entry[1]!r:.60} but "
                             f"{role}/ holds a {class_name!r:.60}; the folder mixes components of different pipelines")


def find_scheduler_config(layout: PipelineLayout) -> Path | None:
    """scheduler/scheduler_config.json of the pipeline; for a bare folder also one beside config.json or in ../scheduler/."""
    root = layout.root
    candidates = [root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"]
    if not layout.is_pipeline:
        candidates.append(root.parent / "scheduler" / "scheduler_config.json")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if layout.is_pipeline and (root / "scheduler").is_dir():
        raise ModelLoadError(f"scheduler/ of {root} has no scheduler_config.json; save the scheduler with save_pretrained")
    return None


def component_classes(index: Mapping[str, Any] | None) -> dict[str, str]:
    """role -> class name as model_index.json records them."""
    out = {}
    for name, entry in (index or {}).items():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str):
            out[name] = entry[1]
    return out
