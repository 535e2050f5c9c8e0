"""Measurements behind a CPU run plan, taken once per machine and UNet architecture and cached: each variant's speed, micro-batch invariance, memory per image."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import atomic_io, machine
from .errors import QmiaError
from .runtime import torch_threads

CACHE_ENV = "QMIA_FAST_PLAN_CACHE"
_CACHE_VERSION = 2  # 2: micro-batch invariance also measured at one thread
_CACHE_MAX_BYTES = 4 << 20
# The variants 'auto' chooses between on a CPU: (name, call precision, Winograd layers, channels_last).
# Where channels_last, the project UNet's GroupNorms run fused (FUSED_BY_DEFAULT on a CPU).
VARIANTS = (("fp32", "fp32", False, False), ("fp32-nhwc", "fp32", False, True), ("fp32-winograd", "fp32", True, True),
            ("bf16", "bf16", False, True))


def cache_path() -> Path | None:
    """Where measured decisions are kept: $QMIA_FAST_PLAN_CACHE, or ~/.cache/qmia-fast/run_plans.json; None if 'off'."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qmia-fast" / "run_plans.json"


def architecture_key(model) -> str:
    """What the speed of a denoiser call depends on: its classes, parameter names, shapes and dtypes, input and condition."""
    digest = hashlib.sha256()
    net = getattr(model, "net", model)
    digest.update(f"{type(model).__name__}|{type(net).__name__}|{tuple(getattr(model, 'input_shape', ()))}|".encode())
    conditioning = getattr(model, "conditioning", None)
    digest.update(repr(None if conditioning is None else conditioning.kind).encode())
    for name, tensor in net.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:32]


def _read_cache(path: Path) -> dict:
    try:
        if not path.is_file() or path.stat().st_size > _CACHE_MAX_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def cached_entries() -> dict:
    """Every cached measurement (empty where the cache is off or unreadable)."""
    path = cache_path()
    return {} if path is None else _read_cache(path)


def cached(key: str) -> dict | None:
    path = cache_path()
    if path is None:
        return None
    entry = _read_cache(path).get(key)
    return entry if isinstance(entry, dict) else None


def store(key: str, entry: dict) -> Path | None:
    """Record a measurement; None (and nothing written) where the cache is off or cannot be written."""
    path = cache_path()
    if path is None:
        return None
    entries = _read_cache(path)
    entries[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_io.write_json(path, {"version": _CACHE_VERSION, "entries": entries})
    except (OSError, QmiaError):  # an unwritable cache: the caller falls back to the flags rule
        return None
    return path


def clear() -> Path | None:
    """Forget every measured decision (`qmia-fast info --clear-plans`)."""
    path = cache_path()
    if path is not None and path.is_file():
        path.unlink()
    return path


def entry_key(kind: str, model, **settings) -> str:
    from . import __version__

    parts = [kind, machine.key(), f"qmia-fast {__version__}", architecture_key(model)]
    parts += [f"{name}={settings[name]}" for name in sorted(settings)]
    return "|".join(parts)


# --------------------------------------------------------------------------- measuring


def probe_condition(model, n: int, device: torch.device):
    """A valid condition for n rows (class 0, or the empty prompt), so conditional models can be timed."""
    spec = getattr(model, "conditioning", None)
    if spec is None:
        return None
    if spec.kind == "class":
        return torch.zeros(n, dtype=torch.long, device=device)
    with torch.inference_mode():
        hidden, _ = model.text_encoder.encode([""])
    return hidden[:1].to(device=device, dtype=torch.float32).expand(n, *hidden.shape[1:]).contiguous()


def bytes_per_image(model, device: torch.device) -> int:
    """An upper bound on the activation memory of one image in one denoiser call: every module output of a forward summed."""
    total = [0]

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    rows = 2
    try:
        x = torch.zeros((rows, *model.input_shape), device=device)
        t = torch.full((rows,), min(100, model.schedule.T - 1), dtype=torch.long, device=device)
        cond = probe_condition(model, rows, device)
        with torch.inference_mode():
            model(x, t) if cond is None else model(x, t, cond)
    finally:
        for handle in handles:
            handle.remove()
    input_bytes = int(np.prod(model.input_shape)) * 4
    return max(total[0] // rows, input_bytes) + 4 * input_bytes  # plus the trajectory's own tensors


def measure_variants(model, unet_batch: int, rungs: tuple[int, ...], build: Callable[[str, bool], Any],
                     variants=VARIANTS) -> dict:
    """Seconds per image per denoiser call of each variant at `unet_batch`, and whether each gives the same bits
    at every size in `rungs` as inside a full micro-batch (the micro-batch ladder's precondition).

    build(call_precision, fast_layers, channels_last) -> Networks configured as a plan with that variant would run it.
    """
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((unet_batch, *model.input_shape), generator=generator)
    t_value = min(100, model.schedule.T - 1)
    t = torch.full((unet_batch,), t_value, dtype=torch.long)
    cond = probe_condition(model, unet_batch, device)
    runs = {}
    for name, call, fast_layers, channels_last in variants:
        nets = build(call, fast_layers, channels_last)
        xs = x.contiguous(memory_format=torch.channels_last) if nets.channels_last else x

        def run(rows: int, nets=nets, xs=xs, call=call):
            nets.activate()
            c = None if cond is None else cond[:rows]
            with torch.inference_mode():
                return nets(xs[:rows], t[:rows], c, call)

        run(min(unet_batch, rungs[0] if rungs else unet_batch))  # warm-up: oneDNN primitive creation, allocator
        runs[name] = (nets, run)
    # Rounds interleave the variants, and each keeps its fastest: a burst of other work on the machine
    # slows one round of every variant rather than every round of one.
    best = {name: float("inf") for name in runs}
    full = {}
    for _ in range(3):
        for name, (nets, run) in runs.items():
            nets.activate()  # the shared model in this variant's layout, outside the timed call
            started = time.perf_counter()
            full[name] = run(unet_batch)
            best[name] = min(best[name], time.perf_counter() - started)
    seconds = {name: value / unet_batch for name, value in best.items()}
    invariant = {}
    for name, (nets, run) in runs.items():
        nets.activate()
        same = all(torch.equal(run(size), full[name][:size]) for size in rungs if size < unet_batch)
        # oneDNN may pick another algorithm for a small batch at another thread count (seen on a Xeon with
        # AMX: a micro-batch of 8 at one thread differed from it at two), so a rung must also give the full
        # micro-batch's bits at one and two threads, the counts a user most often pins.
        for count in (1, 2):
            if same and rungs and count < torch.get_num_threads():
                with torch_threads(count):
                    same = all(torch.equal(run(size), full[name][:size]) for size in rungs if size < unet_batch)
        invariant[name] = same
    return {"seconds_per_image_call": seconds, "micro_batch_invariant": invariant}
