"""Bounded reading of model files and configs: regular files only, configs capped in size, schedule lengths capped."""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelLoadError
from ..file_kinds import file_kind
from ..safe_read import json_loads
from ..schedule import MAX_STEPS

__all__ = [
    "MAX_CONFIG_BYTES", "MAX_SCHEDULE_STEPS", "MAX_IMAGE_SIDE", "require_regular_file", "read_config_text", "read_config_json",
    "check_schedule_steps",
]

# Real configs (a UNet description, a flagfile, a scheduler config, even a schedule written out as
# its betas) are kilobytes; anything far larger is not a config and must not be parsed into memory.
MAX_CONFIG_BYTES = 16 << 20
# DDPMs train with 1000 steps (4000 in improved DDPM); every schedule array has T entries.
MAX_SCHEDULE_STEPS = MAX_STEPS
# The data readers refuse images above 4096 x 4096 pixels, so no model needs a larger side.
MAX_IMAGE_SIDE = 4096


def require_regular_file(path: Path, what: str) -> os.stat_result:
    """stat() `path` and refuse anything but a regular file: reading a FIFO or a device would block or never end."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{what} {path} does not exist; check the path") from None
    except OSError as exc:
        raise ModelLoadError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelLoadError(f"{what} {path} is a folder; expected a file")
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{what} {path} is not a regular file ({file_kind(info.st_mode)}); pass a file on disk")
    return info


def read_config_text(path: Path, what: str = "model config") -> str:
    """The text of a config file, refused before reading when it is not a regular file or larger than MAX_CONFIG_BYTES."""
    path = Path(path)
    info = require_regular_file(path, what)
    if info.st_size > MAX_CONFIG_BYTES:
        raise ModelLoadError(
            f"{what} {path} is {info.st_size} bytes, far larger than any model config "
            f"(at most {MAX_CONFIG_BYTES >> 20} MiB are read); pass the right file"
        )
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, open() returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ModelLoadError(f"{what} {path} is not a regular file; pass a file on disk")
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{what} {path} grew beyond {MAX_CONFIG_BYTES >> 20} MiB while being read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_config_json(path: Path, what: str = "model config") -> Any:
    """Parse a JSON config read with read_config_text; invalid JSON is a ModelLoadError naming the file."""
    return json_loads(read_config_text(path, what), ModelLoadError,
                      f"{what} {path} is not valid JSON (nested too deeply)",
                      lambda exc: f"{what} {path} is not valid JSON ({exc})")


def check_schedule_steps(spec: Any, where: str, limit: int = MAX_SCHEDULE_STEPS) -> None:
    """Refuse a schedule description that asks for more than `limit` steps, before any schedule array is allocated.

    Looks at every key a schedule's length can come from (T, num_train_timesteps, betas,
    trained_betas); other malformations are left to the schedule constructors.
    """
    if not isinstance(spec, Mapping):
        return
    for key in ("T", "num_train_timesteps"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (isinstance(value, float) and math.isnan(value)) or value > limit:  # NaN is no step count either
            raise ModelLoadError(
                f"{where}: schedule {key} = {value!r:.40} steps; at most {limit} are supported "
                "(DDPMs use 1000); fix the config"
            )
    for key in ("betas", "trained_betas"):
        value = spec.get(key)
        if isinstance(value, (list, tuple)) and len(value) > limit:
            raise ModelLoadError(f"{where}: schedule {key} has {len(value)} entries; at most {limit} are supported")
