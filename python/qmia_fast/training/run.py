"""run_training: what `qmia-fast train-target` runs, from its options: the members (with their labels or captions) read once, then the built-in DDPM or a diffusers family trained."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from .targets import DIFFUSERS_DEFAULTS
from .ddpm import TRAIN_DEFAULTS

_D, _F = TRAIN_DEFAULTS, DIFFUSERS_DEFAULTS


@dataclass(frozen=True)
class TrainJob:
    """Every option of `train-target`: the data and members, the optimisation, the built-in UNet, and the families'
    settings (used only with condition="class", objective="flow", latent, denoiser="dit" or text)."""

    out_dir: str
    data: str = "builtin"
    split_path: str | None = None
    members: str | None = None
    part: str | None = None
    steps: int = _D["steps"]
    batch_size: int = _D["batch_size"]
    lr: float = _D["lr"]
    warmup: int = _D["warmup"]
    ema_decay: float = _D["ema_decay"]
    grad_clip: float = _D["grad_clip"]
    weight_decay: float = _D["weight_decay"]
    hflip: bool = _D["hflip"]
    bf16: bool = _D["bf16"]
    seed: int = _D["seed"]
    device: str = "auto"
    save_every: int = _D["save_every"]
    ch: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    attn: tuple = (1,)
    num_res_blocks: int = 2
    dropout: float = 0.1
    T: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    condition: str = "none"
    labels_path: str | None = None
    class_names: tuple | None = None
    cfg_dropout: float = _F["cfg_dropout"]
    objective: str = "ddpm"
    flow_timesteps: str = "uniform"
    latent: bool = False
    denoiser: str = "unet"
    text: bool = False
    captions: str | None = None
    caption_column: str = "text"
    vae_data: str | None = None
    vae_part: str | None = None
    vae_from: str | None = None
    vae_ch: tuple = tuple(_F["vae"]["vae_ch"])
    latent_channels: int = _F["vae"]["latent_channels"]
    kl_weight: float = _F["vae"]["kl_weight"]
    vae_steps: int = _F["vae"]["steps"]
    vae_batch_size: int = _F["vae"]["batch_size"]
    vae_lr: float = _F["vae"]["lr"]
    dit_layers: int = _F["dit"]["layers"]
    dit_heads: int = _F["dit"]["heads"]
    dit_head_dim: int = _F["dit"]["head_dim"]
    patch_size: int = _F["dit"]["patch_size"]
    text_dim: int = _F["text_encoder"]["dim"]
    text_layers: int = _F["text_encoder"]["layers"]
    text_heads: int = _F["text_encoder"]["heads"]
    text_max_length: int = _F["text_encoder"]["max_length"]
    threads: int | None = None

    @property
    def family(self) -> bool:
        """Whether a diffusers family is trained (else the built-in DDPM)."""
        return self.condition == "class" or self.objective == "flow" or self.latent or self.text or \
            self.denoiser == "dit"

    def check(self) -> None:
        """The option combinations that cannot work, as one-line errors before any data is read."""
        if not self.family:
            for given, option in ((self.labels_path, "--labels"), (self.captions, "--captions"),
                                  (self.vae_data, "--vae-data"), (self.vae_from, "--vae"),
                                  (self.class_names, "--class-names")):
                if given is not None:
                    raise ConfigError(f"{option} applies to --condition class, --latent, --denoiser dit or --text; "
                                      "add one of them or drop it")
        elif (self.latent or self.text) and self.vae_data is None and self.vae_from is None:
            raise ConfigError("--latent needs non-member images to train its VAE on: pass --vae-data PATH "
                              "(images outside the members) or --vae FOLDER (a VAE trained before)")


def run_training(job: TrainJob, log: Callable[[str], None] = lambda text: None, progress=None) -> dict[str, Any]:
    """Train the job's target on its members; returns the training summary. `progress(step, total, loss[, stage])`."""
    from ..runtime import torch_threads

    job.check()
    with torch_threads(job.threads):
        return _train_family(job, log, progress) if job.family else _train_ddpm(job, log, progress)


def _members(job: TrainJob, log, **conditions):
    """(all images, LoadedData, member indices) of --data, with labels or captions read the audit's way."""
    from ..data import load_data

    loaded = load_data(job.data, split=job.split_path, members=job.members, part=job.part, **conditions)
    if loaded.split is not None:
        index = np.asarray(loaded.split.members)
        log(f"data: {loaded.description}; training on the {len(index)} members")
    else:
        index = np.arange(len(loaded.images))
        log(f"data: {loaded.description}; no split given, so all {len(index)} images are members")
    return loaded.images, loaded, index


def _metadata(job: TrainJob, loaded, index) -> dict:
    return {"data": str(job.data), "split": job.split_path, "members": job.members, "n_members": int(len(index)),
            "data_description": loaded.description}


def _optimisation(job: TrainJob) -> dict:
    """The options both trainers take alike: optimisation, augmentation, seed, device and checkpointing."""
    return dict(steps=job.steps, batch_size=job.batch_size, lr=job.lr, warmup=job.warmup, ema_decay=job.ema_decay,
                grad_clip=job.grad_clip, weight_decay=job.weight_decay, hflip=job.hflip, bf16=job.bf16,
                seed=job.seed, device=None if job.device == "auto" else job.device, save_every=job.save_every)


def _train_ddpm(job: TrainJob, log, progress) -> dict:
    from ..models.unet import normalize_unet_config
    from ..schedule import linear_schedule
    from .ddpm import train_ddpm

    unet = {"T": job.T, "ch": job.ch, "ch_mult": list(job.ch_mult), "attn": list(job.attn),
            "num_res_blocks": job.num_res_blocks, "dropout": job.dropout}
    # The cheap options first, before any data is read.
    normalize_unet_config({**unet, "img_size": 2 ** (len(unet["ch_mult"]) - 1)})
    schedule = linear_schedule(job.T, job.beta_1, job.beta_T)
    images, loaded, index = _members(job, log)
    return train_ddpm(images[index], job.out_dir, unet=unet, schedule=schedule, **_optimisation(job),
                      progress=progress, metadata=_metadata(job, loaded, index))


def _train_family(job: TrainJob, log, progress) -> dict:
    from ..data import load_data
    from ..errors import require_extra
    from .targets import train_diffusers_target

    require_extra("diffusers", "diffusers", "training a diffusers target")
    if job.text:
        require_extra("transformers", "diffusers", "training a text-conditioned target (--text)")
    column = job.caption_column if job.text and job.caption_column != "text" else None  # "text": the readers' default
    images, loaded, index = _members(job, log, labels=job.labels_path, captions=job.captions if job.text else None,
                                     caption_column=column)
    captions = None
    if job.text:
        if loaded.captions is None:
            raise ConfigError("--text needs captions: pass --captions FILE (file_name or index, and text) or --data "
                              "an image folder holding a metadata.jsonl")
        captions = [loaded.captions[i] for i in index]
    names = list(job.class_names) if job.class_names else (list(loaded.class_names) if loaded.class_names else None)
    vae_images = None
    if job.vae_data is not None and job.vae_from is None:
        vae_loaded = load_data(job.vae_data, part=job.vae_part)
        vae_images = vae_loaded.images
        log(f"VAE data: {vae_loaded.description} (non-members only)")
    return train_diffusers_target(
        images[index], job.out_dir, condition=None if job.condition == "none" else job.condition,
        objective=job.objective, latent=job.latent, denoiser=job.denoiser, text=job.text,
        labels=None if loaded.labels is None else np.asarray(loaded.labels)[index], class_names=names,
        captions=captions, cfg_dropout=job.cfg_dropout, flow_timesteps=job.flow_timesteps,
        unet={"ch": job.ch, "ch_mult": list(job.ch_mult), "attn": list(job.attn),
              "num_res_blocks": job.num_res_blocks, "dropout": job.dropout},
        dit={"layers": job.dit_layers, "heads": job.dit_heads, "head_dim": job.dit_head_dim,
             "patch_size": job.patch_size},
        vae={"vae_ch": list(job.vae_ch), "latent_channels": job.latent_channels, "kl_weight": job.kl_weight,
             "steps": job.vae_steps, "batch_size": job.vae_batch_size, "lr": job.vae_lr,
             "warmup": min(job.warmup, job.vae_steps)},
        vae_images=vae_images, vae_from=job.vae_from,
        text_encoder={"dim": job.text_dim, "layers": job.text_layers, "heads": job.text_heads,
                      "max_length": job.text_max_length},
        T=job.T, beta_1=job.beta_1, beta_T=job.beta_T, **_optimisation(job), progress=progress,
        metadata={**_metadata(job, loaded, index), "vae_data": job.vae_data, "vae_from": job.vae_from,
                  "threads": job.threads})


def job_dict(job: TrainJob) -> dict:
    return asdict(job)
