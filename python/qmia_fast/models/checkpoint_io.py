"""Safe checkpoint reading (no arbitrary unpickling) and state-dict loading with errors that name the bad keys."""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError, UnsafeCheckpointError, require_extra
from .config_io import require_regular_file

__all__ = [
    "safe_torch_load", "load_state_dict_checked", "strip_wrapper_prefixes", "is_torchscript_archive", "tensor_shapes",
    "safetensors_shapes", "read_safetensors",
]

TRUST_HINT = "pass --trust-checkpoint / trust_checkpoint=True only if you trust its author"

# The weights-only unpickler names the offending opcode "GLOBAL" when a pickle references a class or
# function (the only way a pickle can run code); other failures mean the bytes are damaged.
_UNSAFE_PATTERN = re.compile(r"GLOBAL|Unsupported global|not an allowed global")


def safe_torch_load(path: str | Path, trust_checkpoint: bool = False, what: str = "checkpoint", *,
                    mmap: bool = False, unsafe_advice: str | None = None) -> Any:
    """torch.load on CPU with weights_only=True unless trusted; every failure becomes a ModelLoadError.

    mmap: map a zip checkpoint's storages instead of reading them, so that its tensor shapes can
    be checked against a config before the weights take any memory (legacy files are read).
    unsafe_advice: what the refusal of a pickled-code checkpoint tells the user to do; the default
    suggests re-saving it or --trust-checkpoint, which only the model-loading commands have.
    """
    path = Path(path)
    info = require_regular_file(path, what)
    if info.st_size == 0:
        raise ModelLoadError(f"{what} {path} is empty (0 bytes); the file is truncated or was not written")
    if is_torchscript_archive(path):
        raise ModelLoadError(f"{what} {path} is a TorchScript archive; load it with format='torchscript'")
    is_zip = _check_zip_members(path, info.st_size, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if not trust_checkpoint and _UNSAFE_PATTERN.search(message):
            detail = _unpickler_detail(message)
            advice = unsafe_advice or f"Re-save it as a plain state dict, or {TRUST_HINT}"
            raise UnsafeCheckpointError(
                f"{what} {path} contains pickled Python objects or code ({detail}), which could run arbitrary "
                f"code when loaded; it was not loaded. {advice}"
            ) from None
        raise ModelLoadError(
            f"{what} {path} is corrupt or not a PyTorch checkpoint ({_unpickler_detail(message)}); "
            "re-download or re-save it"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile, AttributeError,
            ImportError, TypeError, IndexError, MemoryError, OverflowError) as exc:
        detail = str(exc).split(". ")[0][:200] or type(exc).__name__
        raise ModelLoadError(
            f"{what} {path} is truncated or corrupt and could not be read ({type(exc).__name__}: {detail}); "
            "re-download or re-save it"
        ) from None


def _check_zip_members(path: Path, file_size: int, what: str) -> bool:
    """For a zip checkpoint, refuse compressed or oversized members before torch inflates them; True if a zip."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False  # torch.load then reports the damage in its own words
    for member in members:
        # torch.save stores every record uncompressed; a deflated one could expand a thousandfold.
        if member.compress_type != zipfile.ZIP_STORED or member.file_size > file_size:
            raise ModelLoadError(
                f"{what} {path} is not a checkpoint torch.save wrote: its record {member.filename!r} is compressed "
                f"or claims {member.file_size} bytes in a {file_size}-byte file; re-save it with torch.save"
            )
    return True


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


def tensor_shapes(state_dict: Any, source: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of a state dict's tensors (no data is touched); a ModelLoadError if it is not name -> tensor."""
    if not isinstance(state_dict, Mapping):
        raise ModelLoadError(f"{source}: expected a state dict (name -> tensor), got {type(state_dict).__name__}")
    non_tensors = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ModelLoadError(f"{source}: state dict entries are not tensors: {_few(non_tensors)}")
    return {str(k): tuple(v.shape) for k, v in state_dict.items()}


def _few(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def key_mismatch(expected, found) -> str | None:
    """None when two sets of parameter names agree, else 'missing keys: ...; unexpected keys: ...'."""
    missing, unexpected = set(expected) - set(found), set(found) - set(expected)
    parts = []
    if missing:
        parts.append(f"missing keys: {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_few(unexpected)}")
    return "; ".join(parts) or None


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load strictly, raising ModelLoadError that names missing/unexpected keys or the first shape mismatch."""
    tensor_shapes(state_dict, source)
    expected = module.state_dict()
    mismatch = key_mismatch(expected, state_dict)
    if mismatch:
        raise ModelLoadError(
            f"{source}: the weights do not match the architecture ({mismatch}); "
            "check the model config (--model-config) and --model-format"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"{source}: shape mismatch for {key}: checkpoint has {tuple(state_dict[key].shape)}, "
                f"the configured architecture expects {tuple(tensor.shape)}; check the model config (--model-config)"
            )
    module.load_state_dict(state_dict, strict=True)


def safetensors_shapes(path: str | Path, what: str = "weights") -> dict[str, tuple[int, ...]]:
    """name -> shape from a .safetensors header alone (the library checks the header against the file size)."""
    path = Path(path)
    require_regular_file(path, what)
    st = require_extra("safetensors", "safetensors", f"reading {path}")
    try:
        with st.safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ModelLoadError(f"{what} {path} are truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})") from None


def read_safetensors(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file on the CPU; damage becomes a ModelLoadError."""
    path = Path(path)
    require_regular_file(path, what)
    st = require_extra("safetensors.torch", "safetensors", f"reading {path}")
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - as above
        raise ModelLoadError(f"{what} {path} are truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)
