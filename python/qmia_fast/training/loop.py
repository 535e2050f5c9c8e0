"""The resumable training loop of one stage (a VAE, a denoiser): seeded, EMA, warm-up, clipping, atomic checkpoints."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .. import atomic_io
from ..errors import ConfigError
from .common import CHECKPOINT_TAG, CHECKPOINT_VERSION, RECENT_LOSSES, EpochSampler, cpu_state, read_training_checkpoint

__all__ = ["Stage", "run_stage", "StageProgress"]

StageProgress = Callable[[int, int, float, str], None]  # (step just finished, total steps, its loss, stage name)

# Settings that shape a stage's trajectory: a resumed run must use the same ones.
TRAJECTORY_KEYS = ("batch_size", "lr", "warmup", "ema_decay", "grad_clip", "weight_decay", "bf16", "seed")


@dataclass
class Stage:
    """What run_stage trains.

    build() makes the network (called right after torch.manual_seed(seed), so its init is seeded);
    loss(net, index, generator) is one step's loss on the items `index` (int64 [batch]) with all
    randomness from `generator`; export(ema, step) writes the EMA weights where users load them.
    """

    name: str
    checkpoint_name: str
    fingerprint: Mapping[str, Any]
    hparams: Mapping[str, Any]
    n_items: int
    build: Callable[[], nn.Module]
    loss: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]
    export: Callable[[nn.Module, int], None]


def run_stage(stage: Stage, out_dir: Path, device: torch.device, progress: StageProgress | None = None
              ) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or resume, or find finished) one stage; returns its EMA network (eval mode, no grads) and its summary.

    The global torch RNG is left as it was: model init and dropout use it under fork_rng.
    """
    fingerprint = {**stage.fingerprint, **{key: stage.hparams[key] for key in TRAJECTORY_KEYS},
                   "device_type": device.type}
    checkpoint = read_training_checkpoint(out_dir, fingerprint, stage.checkpoint_name)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _run(stage, fingerprint, checkpoint, out_dir, device, progress)


def _run(stage, fingerprint, checkpoint, out_dir, device, progress):
    h = stage.hparams
    seed = h["seed"]
    torch.manual_seed(seed)
    net = stage.build().to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    trainable = [p for p in net.parameters() if p.requires_grad]
    ema_trainable = [p for p, q in zip(ema.parameters(), net.parameters()) if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=h["lr"], weight_decay=h["weight_decay"])
    # Separate streams: batch order on the CPU, every other draw on the training device.
    index_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    sampler = EpochSampler(stage.n_items, index_gen)
    start_step, elapsed_before, recent = 0, 0.0, []
    if checkpoint is not None:
        net.load_state_dict(checkpoint["net"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
        index_gen.set_state(rng["index"])
        noise_gen.set_state(rng["noise"])
        sampler.load_state_dict(checkpoint["sampler"])
        start_step = int(checkpoint["step"])
        elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        recent = [float(v) for v in checkpoint.get("recent_losses", [])]
    net.train()
    steps, batch = h["steps"], h["batch_size"]
    started = time.perf_counter()
    last_loss = recent[-1] if recent else float("nan")

    def save(step: int) -> None:
        state = {
            "format": CHECKPOINT_TAG, "version": CHECKPOINT_VERSION, "stage": stage.name, "step": step,
            "fingerprint": fingerprint, "net": cpu_state(net), "ema": cpu_state(ema),
            "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "index": index_gen.get_state(), "noise": noise_gen.get_state()},
            "sampler": sampler.state_dict(),
            "elapsed_s": elapsed_before + time.perf_counter() - started,
            "recent_losses": list(recent),
        }
        # Checkpoint first: it is what a restart trusts; the exported folders are a copy of its EMA.
        with atomic_io.atomic_path(out_dir / stage.checkpoint_name) as tmp:
            torch.save(state, tmp)
        stage.export(ema, step)

    for step in range(start_step, steps):
        lr_now = h["lr"] * min(1.0, (step + 1) / h["warmup"]) if h["warmup"] else h["lr"]
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        index = sampler.next(batch).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=h["bf16"]):
            loss = stage.loss(net, index, noise_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if h["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(trainable, h["grad_clip"])
        optimizer.step()
        decay = min(h["ema_decay"], (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_trainable, trainable, 1.0 - decay)
        last_loss = float(loss.item())
        if not math.isfinite(last_loss):
            raise ConfigError(f"{stage.name} training diverged at step {step + 1} (loss {last_loss}); "
                              "lower --lr or enable --grad-clip")
        recent.append(last_loss)
        del recent[:-RECENT_LOSSES]
        if progress is not None:
            progress(step + 1, steps, last_loss, stage.name)
        if (step + 1) % h["save_every"] == 0 or step + 1 == steps:
            save(step + 1)
    if start_step >= steps:
        # Re-exported from the checkpoint: a kill during the last export may have left an older copy.
        stage.export(ema, start_step)
    this_run = time.perf_counter() - started
    summary = {
        "steps": max(steps, start_step),
        "resumed_from_step": start_step,
        "wall_time_s": elapsed_before + this_run,
        "this_run_wall_time_s": this_run,
        "final_loss": last_loss,
        "final_loss_mean": float(np.mean(recent)) if recent else float("nan"),
        "final_loss_window": len(recent),
        "steps_per_s": (max(steps - start_step, 0) / this_run) if this_run > 0 else None,
        "parameters": sum(p.numel() for p in trainable),
        "hyperparameters": dict(h),
    }
    return ema, summary
