"""load_model: resolve "builtin" or a path, detect the checkpoint format, and dispatch to the format's loader."""
from __future__ import annotations

import os
from collections.abc import Mapping
import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from ..runtime import resolve_device
from .checkpoint_io import is_torchscript_archive
from .config_io import require_regular_file
from .diffusers_format import is_diffusers_folder, load_diffusers
from .pytorch_ddpm import load_pytorch_ddpm
from .qmia_format import is_qmia_folder, load_qmia
from .torchscript_format import load_torchscript
from .wrapper import EpsModel

__all__ = ["load_model", "detect_format", "FORMATS", "BUILTIN_TARGET_DIR"]

FORMATS = ("auto", "qmia", "pytorch-ddpm", "diffusers", "torchscript")
BUILTIN_TARGET_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo_target"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")

_LOADERS = {
    "qmia": lambda path, config, trust: load_qmia(path, trust_checkpoint=trust),
    "pytorch-ddpm": load_pytorch_ddpm,
    "diffusers": load_diffusers,
    "torchscript": load_torchscript,
}


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """Return (format, path to hand its loader), judging by folder contents, zip members and file names.

    Folder: config.json tagged qmia-fast-model -> qmia; model_index.json, unet/, transformer/ or a diffusers
    config.json -> diffusers; otherwise a single checkpoint file inside is examined. File: a zip
    with TorchScript code members -> torchscript; any .pt/.safetensors/.json inside a qmia
    folder -> that folder; any other torch file -> pytorch-ddpm, whose loader then checks the keys.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path} does not exist; pass a checkpoint file, a model folder or 'builtin'")
    if path.is_dir():
        if is_qmia_folder(path):
            return "qmia", path
        if is_diffusers_folder(path):
            return "diffusers", path
        checkpoints = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _CHECKPOINT_SUFFIXES)
        if len(checkpoints) == 1:
            return detect_format(checkpoints[0])
        listing = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "empty"
        reason = "several checkpoint files" if checkpoints else "no recognisable model files"
        raise ModelLoadError(
            f"cannot tell the model format of folder {path} ({reason}; contents: {listing}); "
            "pass the checkpoint file itself or --model-format"
        )
    require_regular_file(path, "model")  # a FIFO or device would block every reader below
    # Any file of a qmia model folder (config.json, model.pt, a training checkpoint.pt) means that folder.
    if path.suffix.lower() in (".json", ".pt", ".safetensors") and is_qmia_folder(path.parent):
        return "qmia", path.parent
    if path.name == "config.json" and is_diffusers_folder(path.parent):
        return "diffusers", path.parent
    if path.suffix.lower() == ".safetensors":
        raise ModelLoadError(
            f"cannot tell the model format of {path}: a bare .safetensors file carries no architecture; "
            "pass its folder (qmia or diffusers layout)"
        )
    if path.suffix.lower() == ".json":
        raise ModelLoadError(f"{path} is a config file, not a model; pass the model folder or checkpoint")
    if is_torchscript_archive(path):
        return "torchscript", path
    if zipfile.is_zipfile(path) or path.suffix.lower() in _CHECKPOINT_SUFFIXES or _looks_like_pickle(path):
        return "pytorch-ddpm", path
    raise ModelLoadError(
        f"cannot tell the model format of {path}: it is neither a PyTorch checkpoint nor a TorchScript archive; "
        f"pass --model-format ({', '.join(FORMATS[1:])})"
    )


def _looks_like_pickle(path: Path) -> bool:
    # torch's legacy (non-zip) format starts with a pickle protocol marker.
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def load_model(
    path_or_builtin: str | os.PathLike = "builtin",
    format: str = "auto",
    config=None,
    trust_checkpoint: bool = False,
    device=None,
    lora=None,
) -> EpsModel:
    """Load a target diffusion model as an EpsModel: call it as model(x, t) -> eps.

    path_or_builtin: "builtin" (the shipped demo target), a checkpoint file or a model folder.
    format: auto | qmia | pytorch-ddpm | diffusers | torchscript.
    config: architecture/schedule for formats that do not carry it: a dict, an absl flagfile
        (pytorch-ddpm), a scheduler_config.json (diffusers) or a JSON file (torchscript).
    trust_checkpoint: allow unpickling arbitrary objects (runs code from the file); off by default.
    device: where to put the model (default: stays on CPU). The model is returned in eval mode.
    lora: a LoRA weights file (diffusers' / PEFT's pytorch_lora_weights.safetensors) merged into a
        diffusers model's denoiser (and text encoder) before anything runs; its sha256 and the base
        folder are recorded in model.config["lora"].
    """
    if not isinstance(format, str) or format not in FORMATS:
        raise ModelLoadError(f"model format {format!r:.60} is unknown; use one of {', '.join(FORMATS)}")
    if path_or_builtin is None:
        raise ModelLoadError("no model given; pass a checkpoint path, a model folder or 'builtin'")
    if isinstance(path_or_builtin, bool) or not isinstance(path_or_builtin, (str, os.PathLike)):
        raise ModelLoadError(f"path_or_builtin = {path_or_builtin!r:.60} must be a path (str or os.PathLike) or "
                             "'builtin'")
    if config is not None and not isinstance(config, (str, os.PathLike, Mapping)):
        raise ModelLoadError(f"config = {config!r:.60} must be a path, a dict or None")
    if not isinstance(trust_checkpoint, bool):
        raise ModelLoadError(f"trust_checkpoint = {trust_checkpoint!r:.60} must be True or False")
    if str(path_or_builtin) == "builtin":
        if not is_qmia_folder(BUILTIN_TARGET_DIR):
            raise ModelLoadError(
                f"the built-in demo target is not installed (expected a qmia model folder at {BUILTIN_TARGET_DIR}); "
                "pass --model PATH to a target model"
            )
        path_or_builtin, format = BUILTIN_TARGET_DIR, "qmia"
    path = Path(path_or_builtin).expanduser()
    if format == "auto":
        format, path = detect_format(path)
    elif not path.exists():
        raise ModelLoadError(f"model {path} does not exist; check the path")
    elif not path.is_dir():
        require_regular_file(path, "model")
    elif format == "qmia" and path.is_file():
        path = path.parent
    if lora is not None:
        if format != "diffusers":
            raise ModelLoadError(f"--lora merges into diffusers models only; {path} is a {format} model. "
                                 "Pass the diffusers base model folder the LoRA was trained on")
        model = load_diffusers(path, config, trust_checkpoint, lora=lora)
    else:
        model = _LOADERS[format](path, config, trust_checkpoint)
    model.eval()
    if device is not None:
        model.to(resolve_device(device))
    return model
