"""Safe checkpoint reading (no arbitrary unpickling) and state-dict loading with errors that name the bad keys."""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafeCheckpointError

__all__ = ["safe_torch_load", "load_state_dict_checked", "strip_wrapper_prefixes", "is_torchscript_archive"]

TRUST_HINT = "pass --trust-checkpoint / trust_checkpoint=True only if you trust its author"

# The weights-only unpickler names the offending opcode "GLOBAL" when a pickle references a class or
# function (the only way a pickle can run code); other failures mean the bytes are damaged.
_UNSAFE_PATTERN = re.compile(r"GLOBAL|Unsupported global|not an allowed global")


def safe_torch_load(path: str | Path, trust_checkpoint: bool = False, what: str = "checkpoint") -> Any:
    """torch.load on CPU with weights_only=True unless trusted; every failure becomes a ModelLoadError."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise ModelLoadError(f"{what} {path} is a folder; expected a checkpoint file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{what} {path} is empty (0 bytes); the file is truncated or was not written")
    if is_torchscript_archive(path):
        raise ModelLoadError(f"{what} {path} is a TorchScript archive; load it with format='torchscript'")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if not trust_checkpoint and _UNSAFE_PATTERN.search(message):
            detail = _unpickler_detail(message)
            raise UnsafeCheckpointError(
                f"{what} {path} contains pickled Python objects or code ({detail}), which could run arbitrary "
                f"code when loaded; it was not loaded. Re-save it as a plain state dict, or {TRUST_HINT}"
            ) from None
        raise ModelLoadError(
            f"{what} {path} is corrupt or not a PyTorch checkpoint ({_unpickler_detail(message)}); "
            "re-download or re-save it"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile, AttributeError,
            ImportError, TypeError, IndexError, MemoryError) as exc:
        detail = str(exc).split(". ")[0][:200] or type(exc).__name__
        raise ModelLoadError(
            f"{what} {path} is truncated or corrupt and could not be read ({type(exc).__name__}: {detail}); "
            "re-download or re-save it"
        ) from None


def _unpickler_detail(message: str) -> str:
    referenced = re.search(r"GLOBAL ([\w.]+)", message)
    if referenced:
        return f"it references {referenced.group(1).rstrip('.')}"
    for line in message.splitlines():
        line = line.strip()
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.replace("WeightsUnpickler error: ", "")[:200]
    return message.splitlines()[0][:200] if message else "unreadable pickle"


def is_torchscript_archive(path: str | Path) -> bool:
    """TorchScript archives are zips that carry compiled code (code/ members, constants.pkl); torch.save zips do not."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the key prefixes DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') add."""
    out = {}
    for key, value in state_dict.items():
        key = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in ("module.", "_orig_mod."):
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def _few(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load strictly, raising ModelLoadError that names missing/unexpected keys or the first shape mismatch."""
    if not isinstance(state_dict, Mapping):
        raise ModelLoadError(f"{source}: expected a state dict (name -> tensor), got {type(state_dict).__name__}")
    non_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ModelLoadError(f"{source}: state dict entries are not tensors: {_few(non_tensors)}")
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise ModelLoadError(
            f"{source}: the weights do not match the architecture ({'; '.join(parts)}); "
            "check the model config (--model-config) and --model-format"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"{source}: shape mismatch for {key}: checkpoint has {tuple(state_dict[key].shape)}, "
                f"the configured architecture expects {tuple(tensor.shape)}; check the model config (--model-config)"
            )
    module.load_state_dict(state_dict, strict=True)
