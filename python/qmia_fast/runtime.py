"""Where work runs: device names and torch's thread count, each resolved in one place."""
from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import ConfigError


def resolve_device(device=None, *, default: str = "auto", name: str = "device"):
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' -> torch.device, or a ConfigError.

    None means `default`. A CUDA name where no GPU is usable, or an index past the last
    GPU, is an error that says to use --device cpu. `name`: the argument as the caller knows it.
    """
    import torch

    if device is None:
        device = default
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConfigError(f"{name} = {device!r} is not a device name ({' '.join(str(exc).split())}); "
                              "use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name} = {device!r} but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"{name} = {device!r}: only {torch.cuda.device_count()} CUDA device(s) here; "
                              f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif resolved.type != "cpu":
        raise ConfigError(f"{name} = {device!r} is not supported; use cpu or cuda")
    return resolved


def device_type(device=None) -> str:
    """'cuda' or 'cpu': the kind of device `device` names (for process-group backends), without checking it."""
    import torch

    text = str(device if device is not None else "auto").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if text.startswith("cuda") else "cpu"


def check_threads(threads, name: str = "threads") -> int | None:
    """None (keep torch's setting) or a positive int."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{name} = {threads!r} must be a positive integer (or None to keep torch's setting)")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with `threads` torch intra-op threads (None: unchanged), restoring the setting after."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
