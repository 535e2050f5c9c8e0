"""Train the built-in UNet as a DDPM on member images: seeded, EMA, warm-up, clipping, bf16, atomic resumable checkpoints."""
from __future__ import annotations

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
from .common import CHECKPOINT_NAME, SUMMARY_NAME, own_version, read_training_checkpoint
from .common import data_digest as _data_digest
from .common import resolve_training_device as _resolve_device
from .common import validate_hparams as _validate_hparams
from .common import validate_images as _validate_images
from .loop import TrainingRun

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
    def export(ema, step):
        save_model(ema, out_dir, schedule, _model_metadata(metadata, hparams, step, fingerprint))

    run = TrainingRun(lambda: UNet(**unet_config), hparams, data.shape[0], device, fingerprint=fingerprint,
                      checkpoint=checkpoint, checkpoint_path=out_dir / CHECKPOINT_NAME, export=export)

    # uint8 stays uint8 on the device (1 byte/pixel) and is scaled per batch, as are floats in [0, 1].
    images = torch.from_numpy(data).to(device)
    pixel_divisor = 127.5 if data.dtype == np.uint8 else 0.5  # exact: 255 / 127.5 == 2
    sqrt_abar = torch.from_numpy(np.sqrt(schedule.abar)).float().to(device)
    sqrt_one_minus = torch.from_numpy(np.sqrt(1.0 - schedule.abar)).float().to(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    run.net.to(memory_format=memory_format)
    run.ema.to(memory_format=memory_format)
    batch = hparams["batch_size"]

    def step_loss(net, index, noise_gen):
        # Only the network runs under autocast: the noising and the loss stay in float32.
        x0 = images[index].float().div_(pixel_divisor).sub_(1.0)
        if hparams["hflip"]:
            flip = torch.rand(batch, generator=noise_gen, device=device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(0, schedule.T, (batch,), generator=noise_gen, device=device)
        noise = torch.randn(x0.shape, generator=noise_gen, device=device)
        x_t = sqrt_abar[t].view(-1, 1, 1, 1) * x0 + sqrt_one_minus[t].view(-1, 1, 1, 1) * noise
        x_t = x_t.contiguous(memory_format=memory_format)
        with run.autocast():
            predicted = net(x_t, t)
        return F.mse_loss(predicted.float(), noise)

    run.train(step_loss, progress)
    steps, start_step = hparams["steps"], run.start_step
    if start_step >= steps and not (out_dir / "config.json").is_file():
        run.save(start_step)
    summary = {
        **run.summary(),
        "images": int(data.shape[0]),
        "image_shape": [int(v) for v in data.shape[1:]],
        "device": str(device),
        "parameters": count_parameters(run.net),
        "hyperparameters": hparams,
        "unet": unet_config,
        "schedule": schedule.to_dict(),
        "data_sha256": fingerprint["data"]["sha256"],
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "qmia_fast": own_version()},
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

