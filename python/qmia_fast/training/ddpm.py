"""Train the built-in UNet as a DDPM on member images: seeded, EMA, warm-up, clipping, bf16, atomic resumable checkpoints."""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .. import atomic_io
from ..errors import ConfigError, InputError
from ..models.qmia_format import FORMAT_TAG as MODEL_FORMAT_TAG
from ..models.qmia_format import save_model
from ..models.unet import UNet, count_parameters, normalize_unet_config
from ..schedule import Schedule, linear_schedule, schedule_from_dict
from .common import CHECKPOINT_NAME, SUMMARY_NAME, read_training_checkpoint
from .common import CHECKPOINT_TAG as _CHECKPOINT_TAG
from .common import CHECKPOINT_VERSION as _CHECKPOINT_VERSION
from .common import RECENT_LOSSES as _RECENT_LOSSES
from .common import EpochSampler as _EpochSampler
from .common import cpu_state as _cpu_state
from .common import data_digest as _data_digest
from .common import resolve_training_device as _resolve_device
from .common import validate_hparams as _validate_hparams
from .common import validate_images as _validate_images

__all__ = ["train_ddpm", "TRAIN_DEFAULTS", "CHECKPOINT_NAME", "SUMMARY_NAME"]

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 20000,
    "batch_size": 128,
    "lr": 2e-4,
    "warmup": 1000,
    "ema_decay": 0.9999,
    "grad_clip": 1.0,
    "weight_decay": 0.0,
    "hflip": True,
    "bf16": False,
    "seed": 0,
    "save_every": 1000,
}

# Settings that shape the training trajectory: a resumed run must use the same ones.
_TRAJECTORY_KEYS = ("batch_size", "lr", "warmup", "ema_decay", "grad_clip", "weight_decay", "hflip", "bf16", "seed")

ProgressCallback = Callable[[int, int, float], None]  # (step just finished, total steps, its loss)


def train_ddpm(
    images,
    out_dir: str | Path,
    *,
    unet: Mapping[str, Any] | None = None,
    schedule: Schedule | Mapping[str, Any] | None = None,
    steps: int = TRAIN_DEFAULTS["steps"],
    batch_size: int = TRAIN_DEFAULTS["batch_size"],
    lr: float = TRAIN_DEFAULTS["lr"],
    warmup: int = TRAIN_DEFAULTS["warmup"],
    ema_decay: float = TRAIN_DEFAULTS["ema_decay"],
    grad_clip: float = TRAIN_DEFAULTS["grad_clip"],
    weight_decay: float = TRAIN_DEFAULTS["weight_decay"],
    hflip: bool = TRAIN_DEFAULTS["hflip"],
    bf16: bool = TRAIN_DEFAULTS["bf16"],
    seed: int = TRAIN_DEFAULTS["seed"],
    device=None,
    save_every: int = TRAIN_DEFAULTS["save_every"],
    progress: ProgressCallback | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train eps_theta with the DDPM loss on `images` (uint8 N x C x H x W, or floats in [0, 1]); returns the summary.

    Writes to out_dir: model.pt + config.json (EMA weights, loadable with load_model), a resumable
    checkpoint.pt every `save_every` steps and at the end, and train_summary.json. If out_dir already
    holds a checkpoint of the same configuration, training resumes from it (up to `steps` in all).
    EMA decay is min(ema_decay, (1 + step) / (10 + step)) so that short runs still average.
    The global torch RNG is left as it was; all randomness comes from `seed`.
    """
    out_dir = Path(out_dir)
    data = _validate_images(images)
    n_images, channels, height, width = data.shape
    if height != width:
        raise InputError(f"images are {height} x {width}; the DDPM UNet trains on square images")
    requested = dict(unet or {})
    requested.setdefault("in_ch", channels)
    requested.setdefault("img_size", height)
    unet_config = normalize_unet_config(requested)
    if unet_config["in_ch"] != channels or unet_config["img_size"] != height:
        raise ConfigError(
            f"UNet config: in_ch = {unet_config['in_ch']}, img_size = {unet_config['img_size']} do not fit "
            f"the images ({channels} x {height} x {width})"
        )
    if schedule is None:
        schedule = linear_schedule(unet_config["T"])
    elif not isinstance(schedule, Schedule):
        schedule = schedule_from_dict(schedule)
    if schedule.T != unet_config["T"]:
        raise ConfigError(f"schedule has T = {schedule.T} but the UNet config has T = {unet_config['T']}")
    hparams = _validate_hparams(dict(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, ema_decay=ema_decay,
                                     grad_clip=grad_clip, weight_decay=weight_decay, hflip=hflip, bf16=bf16,
                                     seed=seed, save_every=save_every))
    device = _resolve_device(device)
    fingerprint = {
        "unet": unet_config,
        "schedule": schedule.to_dict(),
        "data": {"n_images": int(n_images), "shape": [int(channels), int(height), int(width)],
                 "sha256": _data_digest(data)},
        "device_type": device.type,
        **{key: hparams[key] for key in _TRAJECTORY_KEYS},
    }
    checkpoint = _read_resume_checkpoint(out_dir, fingerprint)

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        return _train(data, out_dir, device, unet_config, schedule, hparams, fingerprint, checkpoint,
                      progress, dict(metadata or {}))


# ---------------------------------------------------------------------- the loop


def _train(data, out_dir, device, unet_config, schedule, hparams, fingerprint, checkpoint, progress, metadata):
    seed = hparams["seed"]
    torch.manual_seed(seed)  # model init and dropout; restored from the checkpoint on resume
    net = UNet(**unet_config).to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    trainable = [p for p in net.parameters() if p.requires_grad]
    ema_trainable = [p for p, q in zip(ema.parameters(), net.parameters()) if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hparams["lr"], weight_decay=hparams["weight_decay"])
    # Separate streams: batch order on the CPU, noise/timesteps/flips on the training device.
    index_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    sampler = _EpochSampler(data.shape[0], index_gen)
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

    # uint8 stays uint8 on the device (1 byte/pixel) and is scaled per batch, as are floats in [0, 1].
    images = torch.from_numpy(data).to(device)
    pixel_divisor = 127.5 if data.dtype == np.uint8 else 0.5  # exact: 255 / 127.5 == 2
    sqrt_abar = torch.from_numpy(np.sqrt(schedule.abar)).float().to(device)
    sqrt_one_minus = torch.from_numpy(np.sqrt(1.0 - schedule.abar)).float().to(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    net.to(memory_format=memory_format)
    ema.to(memory_format=memory_format)
    net.train()

    steps, batch = hparams["steps"], hparams["batch_size"]
    started = time.perf_counter()
    last_loss = recent[-1] if recent else float("nan")

    def save(step: int) -> None:
        elapsed = elapsed_before + time.perf_counter() - started
        state = {
            "format": _CHECKPOINT_TAG,
            "version": _CHECKPOINT_VERSION,
            "step": step,
            "fingerprint": fingerprint,
            "net": _cpu_state(net),
            "ema": _cpu_state(ema),
            "optimizer": optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "index": index_gen.get_state(),
                "noise": noise_gen.get_state(),
            },
            "sampler": sampler.state_dict(),
            "elapsed_s": elapsed,
            "recent_losses": list(recent),
        }
        # Checkpoint first: it is what a restart trusts; the model files are a convenience copy of the EMA.
        with atomic_io.atomic_path(out_dir / CHECKPOINT_NAME) as tmp:
            torch.save(state, tmp)
        save_model(ema, out_dir, schedule, _model_metadata(metadata, hparams, step, fingerprint))

    for step in range(start_step, steps):
        lr_now = hparams["lr"] * min(1.0, (step + 1) / hparams["warmup"]) if hparams["warmup"] else hparams["lr"]
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        index = sampler.next(batch).to(device)
        x0 = images[index].float().div_(pixel_divisor).sub_(1.0)
        if hparams["hflip"]:
            flip = torch.rand(batch, generator=noise_gen, device=device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(0, schedule.T, (batch,), generator=noise_gen, device=device)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        x_t = sqrt_abar[t].view(-1, 1, 1, 1) * x0 + sqrt_one_minus[t].view(-1, 1, 1, 1) * noise
        x_t = x_t.contiguous(memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=hparams["bf16"]):
            predicted = net(x_t, t)
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hparams["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(trainable, hparams["grad_clip"])
        optimizer.step()
        decay = min(hparams["ema_decay"], (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_trainable, trainable, 1.0 - decay)
        last_loss = float(loss.item())
        if not math.isfinite(last_loss):
            raise ConfigError(
                f"training diverged at step {step + 1} (loss {last_loss}); lower --lr or enable --grad-clip"
            )
        recent.append(last_loss)
        del recent[:-_RECENT_LOSSES]
        if progress is not None:
            progress(step + 1, steps, last_loss)
        if (step + 1) % hparams["save_every"] == 0 or step + 1 == steps:
            save(step + 1)

    if start_step >= steps and not (out_dir / "config.json").is_file():
        save(start_step)
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
        "images": int(data.shape[0]),
        "image_shape": [int(v) for v in data.shape[1:]],
        "device": str(device),
        "parameters": count_parameters(net),
        "hyperparameters": hparams,
        "unet": unet_config,
        "schedule": schedule.to_dict(),
        "data_sha256": fingerprint["data"]["sha256"],
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "qmia_fast": _own_version()},
        "model": str(out_dir),
        "metadata": metadata,
    }
    atomic_io.write_json(out_dir / SUMMARY_NAME, summary)
    return summary


# ---------------------------------------------------------------------- helpers


def _read_resume_checkpoint(out_dir: Path, fingerprint: Mapping[str, Any]):
    if not (out_dir / CHECKPOINT_NAME).is_file():
        config = out_dir / "config.json"
        if config.is_file() and MODEL_FORMAT_TAG in config.read_text(encoding="utf-8", errors="replace"):
            raise ConfigError(
                f"--out {out_dir} already holds a model but no {CHECKPOINT_NAME} to resume from; "
                "choose another --out or delete that folder"
            )
        return None
    return read_training_checkpoint(out_dir, fingerprint)


def _model_metadata(metadata, hparams, step, fingerprint) -> dict[str, Any]:
    return {
        **metadata,
        "trained_by": "qmia-fast train-target",
        "step": step,
        "weights": "ema",
        "hyperparameters": hparams,
        "data_sha256": fingerprint["data"]["sha256"],
        "n_images": fingerprint["data"]["n_images"],
    }


def _own_version() -> str:
    from .. import __version__

    return __version__
