"""The resumable training loop every train-target mode runs (seeded, EMA, warm-up, clipping, atomic checkpoints), and run_stage on it."""
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

__all__ = ["Stage", "run_stage", "StageProgress", "TrainingRun"]

StageProgress = Callable[[int, int, float, str], None]  # (step just finished, total steps, its loss, stage name)
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]  # (net, item indices, generator)

# Settings that shape a stage's trajectory: a resumed run must use the same ones.
TRAJECTORY_KEYS = ("batch_size", "lr", "warmup", "ema_decay", "grad_clip", "weight_decay", "bf16", "seed")


class TrainingRun:
    """One run's network, EMA copy, optimizer, random streams and epoch sampler; resumed from `checkpoint` if given.

    The built-in DDPM and every diffusers stage train through this one class, so that they build in
    the same order: torch.manual_seed(seed), build(), the EMA deepcopy, then the two generators.
    That order fixes the initial weights and every draw, which is what keeps runs, and resumed runs,
    bit-identical; do not reorder it. save() writes the checkpoint, then export(ema, step).
    """

    def __init__(self, build: Callable[[], nn.Module], hparams: Mapping[str, Any], n_items: int,
                 device: torch.device, *, fingerprint: Mapping[str, Any], checkpoint: Mapping[str, Any] | None,
                 checkpoint_path: Path, export: Callable[[nn.Module, int], None], stage: str | None = None):
        self.hparams, self.device, self.fingerprint = hparams, device, fingerprint
        self.checkpoint_path, self.export, self.stage = checkpoint_path, export, stage
        seed = hparams["seed"]
        torch.manual_seed(seed)  # model init and dropout; restored from the checkpoint on resume
        self.net = build().to(device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.ema_trainable = [p for p, q in zip(self.ema.parameters(), self.net.parameters()) if q.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=hparams["lr"], weight_decay=hparams["weight_decay"])
        # Separate streams: batch order on the CPU, every other draw on the training device.
        self.index_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.sampler = EpochSampler(n_items, self.index_gen)
        self.start_step, self.elapsed_before, self.recent = 0, 0.0, []
        self.started = time.perf_counter()  # train() restarts this run's clock
        if checkpoint is not None:
            self._restore(checkpoint)
        self.last_loss = self.recent[-1] if self.recent else float("nan")

    def _restore(self, checkpoint: Mapping[str, Any]) -> None:
        self.net.load_state_dict(checkpoint["net"])
        self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.index_gen.set_state(rng["index"])
        self.noise_gen.set_state(rng["noise"])
        self.sampler.load_state_dict(checkpoint["sampler"])
        self.start_step = int(checkpoint["step"])
        self.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        self.recent = [float(v) for v in checkpoint.get("recent_losses", [])]

    def save(self, step: int) -> None:
        device = self.device
        state = {
            "format": CHECKPOINT_TAG, "version": CHECKPOINT_VERSION,
            # The DDPM checkpoint has no stage entry (it predates stages); the key order is kept as written before.
            **({"stage": self.stage} if self.stage is not None else {}),
            "step": step, "fingerprint": self.fingerprint, "net": cpu_state(self.net), "ema": cpu_state(self.ema),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "index": self.index_gen.get_state(), "noise": self.noise_gen.get_state()},
            "sampler": self.sampler.state_dict(),
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.started,
            "recent_losses": list(self.recent),
        }
        # Checkpoint first: it is what a restart trusts; what export writes is a copy of its EMA.
        with atomic_io.atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)
        self.export(self.ema, step)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.hparams["bf16"])

    def train(self, step_loss: StepLoss, progress: Callable[[int, int, float], None] | None = None,
              what: str = "training") -> None:
        """From start_step up to hparams["steps"]; step_loss(net, index, noise generator) is one step's loss.

        Saves every save_every steps and at the last; `what` names the run in the divergence error.
        The clock of this run (for the summary and the checkpoint's elapsed_s) starts here.
        """
        h = self.hparams
        net, optimizer, trainable, recent = self.net, self.optimizer, self.trainable, self.recent
        net.train()
        steps, batch = h["steps"], h["batch_size"]
        self.started = time.perf_counter()
        for step in range(self.start_step, steps):
            lr_now = h["lr"] * min(1.0, (step + 1) / h["warmup"]) if h["warmup"] else h["lr"]
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            index = self.sampler.next(batch).to(self.device)
            loss = step_loss(net, index, self.noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if h["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(trainable, h["grad_clip"])
            optimizer.step()
            decay = min(h["ema_decay"], (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_trainable, trainable, 1.0 - decay)
            self.last_loss = last_loss = float(loss.item())
            if not math.isfinite(last_loss):
                raise ConfigError(f"{what} diverged at step {step + 1} (loss {last_loss}); "
                                  "lower --lr or enable --grad-clip")
            recent.append(last_loss)
            del recent[:-RECENT_LOSSES]
            if progress is not None:
                progress(step + 1, steps, last_loss)
            if (step + 1) % h["save_every"] == 0 or step + 1 == steps:
                self.save(step + 1)

    def summary(self) -> dict[str, Any]:
        """The summary entries every mode writes first: steps, resume point, times and the final losses."""
        steps, start_step, recent = self.hparams["steps"], self.start_step, self.recent
        this_run = time.perf_counter() - self.started
        return {
            "steps": max(steps, start_step),
            "resumed_from_step": start_step,
            "wall_time_s": self.elapsed_before + this_run,
            "this_run_wall_time_s": this_run,
            "final_loss": self.last_loss,
            "final_loss_mean": float(np.mean(recent)) if recent else float("nan"),
            "final_loss_window": len(recent),
            "steps_per_s": (max(steps - start_step, 0) / this_run) if this_run > 0 else None,
        }


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
    loss: StepLoss
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
    run = TrainingRun(stage.build, stage.hparams, stage.n_items, device, fingerprint=fingerprint,
                      checkpoint=checkpoint, checkpoint_path=out_dir / stage.checkpoint_name,
                      export=stage.export, stage=stage.name)

    def step_loss(net, index, generator):
        with run.autocast():
            return stage.loss(net, index, generator)

    def step_progress(step, steps, loss):
        progress(step, steps, loss, stage.name)

    run.train(step_loss, None if progress is None else step_progress, what=f"{stage.name} training")
    if run.start_step >= stage.hparams["steps"]:
        # Re-exported from the checkpoint: a kill during the last export may have left an older copy.
        stage.export(run.ema, run.start_step)
    summary = {**run.summary(), "parameters": sum(p.numel() for p in run.trainable),
               "hyperparameters": dict(stage.hparams)}
    return run.ema, summary
