"""Train the built-in UNet as a DDPM on member images: seeded, EMA, warm-up, clipping, bf16, atomic resumable checkpoints."""
from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from . import atomic_io
from .errors import ConfigError, InputError
from .models.checkpoint_io import safe_torch_load
from .models.qmia_format import FORMAT_TAG as MODEL_FORMAT_TAG
from .models.qmia_format import save_model
from .models.unet import UNet, count_parameters, normalize_unet_config
from .runtime import resolve_device
from .schedule import Schedule, linear_schedule, schedule_from_dict
from .seeds import check_seed

__all__ = ["train_ddpm", "TRAIN_DEFAULTS", "CHECKPOINT_NAME", "SUMMARY_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "train_summary.json"
_CHECKPOINT_TAG = "qmia-fast-train-checkpoint"
_CHECKPOINT_VERSION = 1
_RECENT_LOSSES = 100  # the "final loss" is the mean over this many last steps

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


class _EpochSampler:
    """Shuffled passes over the data (each image once per epoch); its state is two tensors, so it checkpoints."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order = torch.randperm(n, generator=generator)
        self.position = 0

    def next(self, batch: int) -> torch.Tensor:
        parts, needed = [], batch
        while needed:
            if self.position == self.n:
                self.order = torch.randperm(self.n, generator=self.generator)
                self.position = 0
            take = min(needed, self.n - self.position)
            parts.append(self.order[self.position:self.position + take])
            self.position += take
            needed -= take
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.order, self.position = state["order"].clone(), int(state["position"])


def _validate_images(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise InputError(f"images must be a numpy array or tensor (N x C x H x W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(f"images must be a non-empty N x C x H x W array, got shape {images.shape}")
    if images.dtype == np.uint8:
        images = np.ascontiguousarray(images)
        # torch.from_numpy warns on read-only arrays (memory maps, load_data's outputs); copy those once.
        return images if images.flags.writeable else images.copy()
    if images.dtype.kind == "f":
        if not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0:
            raise InputError("float images must lie in [0, 1]; pass uint8 in [0, 255] or floats in [0, 1]")
        return np.ascontiguousarray(images, dtype=np.float32)
    raise InputError(f"images must be uint8 in [0, 255] or floats in [0, 1], got dtype {images.dtype}")


def _validate_hparams(h: dict[str, Any]) -> dict[str, Any]:
    def check(ok: bool, name: str, rule: str):
        if not ok:
            raise ConfigError(f"--{name.replace('_', '-')} = {h[name]!r} {rule}")

    for name in ("steps", "batch_size", "save_every"):
        check(isinstance(h[name], (int, np.integer)) and not isinstance(h[name], bool) and h[name] >= 1,
              name, "must be an integer >= 1")
    check(isinstance(h["warmup"], (int, np.integer)) and h["warmup"] >= 0, "warmup", "must be an integer >= 0")
    check_seed(h["seed"], "--seed")
    check(_finite(h["lr"]) and h["lr"] > 0, "lr", "must be a positive number")
    check(_finite(h["ema_decay"]) and 0.0 <= h["ema_decay"] < 1.0, "ema_decay", "must be in [0, 1)")
    check(_finite(h["grad_clip"]) and h["grad_clip"] >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
    check(_finite(h["weight_decay"]) and h["weight_decay"] >= 0, "weight_decay", "must be >= 0")
    out = {k: (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v) for k, v in h.items()}
    for name in ("lr", "ema_decay", "grad_clip", "weight_decay"):
        out[name] = float(out[name])
    out["hflip"], out["bf16"] = bool(out["hflip"]), bool(out["bf16"])
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _resolve_device(device) -> torch.device:
    # Training pins the GPU index, so that the checkpoint records where it ran.
    resolved = resolve_device(device, default="auto", name="--device")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _data_digest(data: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(repr(data.shape).encode())
    digest.update(memoryview(data).cast("B"))
    return digest.hexdigest()


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _read_resume_checkpoint(out_dir: Path, fingerprint: Mapping[str, Any]):
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        config = out_dir / "config.json"
        if config.is_file() and MODEL_FORMAT_TAG in config.read_text(encoding="utf-8", errors="replace"):
            raise ConfigError(
                f"--out {out_dir} already holds a model but no {CHECKPOINT_NAME} to resume from; "
                "choose another --out or delete that folder"
            )
        return None
    checkpoint = safe_torch_load(
        path, trust_checkpoint=False, what="training checkpoint",
        unsafe_advice=f"train-target writes plain tensors only, so this file is not one of its checkpoints; "
                      f"delete {path} or choose another --out to train afresh",
    )
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != _CHECKPOINT_TAG:
        raise ConfigError(f"--out {out_dir}: {CHECKPOINT_NAME} is not a qmia-fast training checkpoint")
    if checkpoint.get("version") != _CHECKPOINT_VERSION:
        raise ConfigError(f"--out {out_dir}: {CHECKPOINT_NAME} has version {checkpoint.get('version')!r}; "
                          f"this qmia-fast resumes version {_CHECKPOINT_VERSION}")
    saved = checkpoint.get("fingerprint", {})
    differing = [key for key in fingerprint if _normalise(saved.get(key)) != _normalise(fingerprint[key])]
    if differing:
        details = "; ".join(f"{key}: saved {_short(saved.get(key))}, now {_short(fingerprint[key])}"
                            for key in differing[:3])
        raise ConfigError(
            f"--out {out_dir} holds a training run with a different configuration ({details}); "
            "rerun with the original options to resume, or choose another --out"
        )
    return checkpoint


def _normalise(value):
    # Tuples come back from torch.load as lists, ints may come back as floats in nested JSON-ish dicts.
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    from . import __version__

    return __version__
