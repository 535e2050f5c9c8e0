"""train_diffusers_target: class-conditional, flow-matching, latent (VAE), DiT and text-to-image targets as standard diffusers folders."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import atomic_io
from ..errors import ConfigError, InputError
from ..schedule import linear_schedule
from . import architectures as arch
from .autoencoder import (check_disjoint_from_members, encode_latents, load_vae, scaling_factor, vae_stage,
                          weights_digest)
from .common import (CHECKPOINT_NAME, SUMMARY_NAME, data_digest, own_version, resolve_training_device,
                     validate_hparams, validate_images)
from .folders import (PIPELINES, export_component, scheduler_config,
                      write_conditioning, write_model_index, write_scheduler)
from .loop import StageProgress, run_stage
from .objectives import FLOW_TIMESTEPS, OBJECTIVES, DenoiserObjective, drop_condition

__all__ = ["train_diffusers_target", "DIFFUSERS_DEFAULTS"]

DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "cfg_dropout": 0.1, "flow_timesteps": "uniform",
    "unet": {"ch": 32, "ch_mult": [1, 2, 2], "attn": [1], "num_res_blocks": 1, "dropout": 0.0},
    "dit": {"layers": 4, "heads": 4, "head_dim": 32, "patch_size": 2},
    "vae": {"vae_ch": [32, 64], "latent_channels": 4, "kl_weight": 1e-3, "steps": 2000, "batch_size": 64,
            "lr": 1e-3, "warmup": 100},
    "text_encoder": {"dim": 64, "layers": 2, "heads": 4, "max_length": 32},
}


def train_diffusers_target(
    images, out_dir: str | Path, *, condition: str | None = None, objective: str = "ddpm", latent: bool = False,
    denoiser: str = "unet", text: bool = False, labels=None, class_names: Sequence[str] | None = None,
    captions: Sequence[str] | None = None, cfg_dropout: float = DIFFUSERS_DEFAULTS["cfg_dropout"],
    flow_timesteps: str = DIFFUSERS_DEFAULTS["flow_timesteps"], unet: Mapping[str, Any] | None = None,
    dit: Mapping[str, Any] | None = None, vae: Mapping[str, Any] | None = None, vae_images=None,
    vae_from: str | Path | None = None, text_encoder: Mapping[str, Any] | None = None,
    T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02, steps: int = 2000, batch_size: int = 32,
    lr: float = 1e-3, warmup: int = 200, ema_decay: float = 0.999, grad_clip: float = 1.0,
    weight_decay: float = 0.0, hflip: bool = False, bf16: bool = False, seed: int = 0, device=None,
    save_every: int = 500, progress: StageProgress | None = None, metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a diffusers target on the member `images` (uint8 N x C x H x W or floats in [0, 1]); returns the summary.

    condition: None or "class" (labels: int [N], the null class K = num_classes dropped in at
    rate cfg_dropout); objective: "ddpm" (eps-prediction, linear betas) or "flow" (x_s = (1 - s)
    x0 + s eps, v = eps - x0, s drawn by flow_timesteps); latent: an AutoencoderKL trained first on
    `vae_images` (non-members only) or reused from `vae_from`, the denoiser then on posterior
    mean * scaling_factor; denoiser "dit" (latent, class-conditional); text: captions [N] through a
    frozen seeded CLIPTextModel (implies latent). Rerunning with the same out_dir resumes.
    """
    out_dir = Path(out_dir)
    data = validate_images(images)
    n, channels, height, width = data.shape
    if height != width:
        raise InputError(f"images are {height} x {width}; train-target trains on square images")
    plan = _plan(condition, objective, latent, denoiser, text, cfg_dropout, flow_timesteps)
    labels_t, class_names = _labels(plan, labels, class_names, n)
    if plan["text"] and (captions is None or len(captions) != n):
        raise ConfigError("--text needs one caption per member image: pass --captions FILE or an image folder with "
                          f"a metadata.jsonl (got {0 if captions is None else len(captions)} for {n} images)")
    h = validate_hparams(dict(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, ema_decay=ema_decay,
                              grad_clip=grad_clip, weight_decay=weight_decay, hflip=hflip, bf16=bf16, seed=seed,
                              save_every=save_every))
    schedule = linear_schedule(T, beta_1, beta_T)
    unet = {**DIFFUSERS_DEFAULTS["unet"], **(unet or {})}
    dit = {**DIFFUSERS_DEFAULTS["dit"], **(dit or {})}
    vae_settings = {**DIFFUSERS_DEFAULTS["vae"], **(vae or {})}
    text_settings = {**DIFFUSERS_DEFAULTS["text_encoder"], **(text_encoder or {})}
    device = resolve_training_device(device)

    # Every shape and option is checked before any training starts.
    vae_config = reused_vae = vae_h = vae_data = None
    size, in_channels = height, channels
    if plan["latent"]:
        if vae_from is not None:
            reused_vae = load_vae(vae_from, data.shape[1:])
            latent_channels = int(reused_vae.config.latent_channels)
            size //= 2 ** (len(reused_vae.config.block_out_channels) - 1)
        else:
            if vae_images is None:
                raise ConfigError("--latent needs non-member images to train its VAE on: pass --vae-data PATH "
                                  "(images outside the members) or --vae FOLDER (a VAE trained before)")
            vae_data = validate_images(vae_images)
            if vae_data.shape[1:] != data.shape[1:]:
                raise InputError(f"--vae-data images are {tuple(vae_data.shape[1:])} but the members are "
                                 f"{tuple(data.shape[1:])}; pass images of the same shape")
            if vae_data.dtype == np.uint8 and data.dtype == np.uint8:
                check_disjoint_from_members(vae_data, data)
            vae_config = arch.vae_config(sample_size=height, channels=channels, vae_ch=vae_settings["vae_ch"],
                                         latent_channels=vae_settings["latent_channels"])
            vae_h = validate_hparams({**h, **{k: vae_settings[k] for k in ("steps", "batch_size", "lr", "warmup")},
                                      "save_every": min(h["save_every"], int(vae_settings["steps"]))})
            latent_channels = int(vae_settings["latent_channels"])
            size //= 2 ** (len(vae_config["block_out_channels"]) - 1)
        in_channels = latent_channels
    kind, net_config = _denoiser_config(plan, size, in_channels, unet, dit, len(class_names or ()), text_settings)
    tokenizer = encoder = None
    if plan["text"]:
        tokenizer, encoder, text_config = _text_side(captions, out_dir, text_settings, seed)
        net_config["cross_attention_dim"] = text_config["hidden_size"]

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vae_summary = None
    vae_folder = out_dir / ("vae" if plan["family"] in ("dit", "text") else "vqvae")
    vae_net = None
    if plan["latent"]:
        if reused_vae is not None:
            vae_net = reused_vae.to(device)
            export_component(vae_net, vae_folder)
            vae_summary = {"reused_from": str(vae_from), "config": dict(vae_net.config)}
        else:
            stage = vae_stage(vae_data, vae_folder, vae_config, vae_h, float(vae_settings["kl_weight"]), h["hflip"],
                              device)
            vae_net, vae_summary = run_stage(stage, out_dir, device, progress)
            # Recomputed even when the finished stage was only read back: the factor is not in the state dict.
            vae_net.register_to_config(scaling_factor=scaling_factor(vae_net, vae_data, device))
            vae_summary.update({"config": vae_config, "kl_weight": float(vae_settings["kl_weight"]),
                                "images": int(len(vae_data)), "data_sha256": data_digest(vae_data)})
        vae_summary["scaling_factor"] = float(vae_net.config.scaling_factor)
        vae_summary["weights_sha256"] = weights_digest(vae_net)

    source = _training_source(plan, data, vae_net, device, h["hflip"])
    cond_source, null = _condition_source(plan, labels_t, class_names, captions, tokenizer, encoder, device)
    objective_fn = DenoiserObjective(plan["objective"], schedule, T, plan["flow_timesteps"], device)
    predict = _predictor(kind)
    rate = plan["cfg_dropout"]

    def loss(net, index, generator):
        x0 = source(index, generator)
        cond = None
        if cond_source is not None:
            cond = cond_source[index]
            drop = drop_condition(len(index), rate, generator, device)
            cond = torch.where(drop.view((-1,) + (1,) * (cond.dim() - 1)), null, cond)
        return objective_fn(lambda x, t, c: predict(net, x, t, c), x0, cond, generator)

    component = "transformer" if kind == "dit" else "unet"
    sched_class, sched_config = scheduler_config(plan["objective"], schedule.to_dict(), clip_sample=not plan["latent"])
    write_scheduler(out_dir, sched_class, sched_config)
    classes = {"scheduler": ("diffusers", sched_class), component: ("diffusers", arch._CLASSES[kind]),
               "vae": ("diffusers", "AutoencoderKL"), "vqvae": ("diffusers", "AutoencoderKL"),
               "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer")}
    extra = {"id2label": {str(k): name for k, name in enumerate(class_names)}} if kind == "dit" else None
    write_model_index(out_dir, plan["family"], classes, extra)
    conditioning = _conditioning_record(plan, class_names, tokenizer)
    if conditioning is not None:
        write_conditioning(out_dir, conditioning)

    from .loop import Stage

    fingerprint = {
        "family": plan["family"], "denoiser": {"class": arch._CLASSES[kind], "config": net_config},
        "objective": plan["objective"], "flow_timesteps": plan["flow_timesteps"], "schedule": schedule.to_dict(),
        "condition": plan["condition"], "cfg_dropout": rate, "hflip": h["hflip"],
        "data": {"n_images": int(n), "shape": [int(channels), int(height), int(width)], "sha256": data_digest(data)},
        "labels_sha256": None if labels_t is None else data_digest(labels_t.cpu().numpy()),
        "captions_sha256": None if captions is None else _text_digest(captions),
        "vae_sha256": None if vae_summary is None else vae_summary["weights_sha256"],
        "text_encoder": None if encoder is None else {"config": text_config, "seed": int(seed)},
    }
    stage = Stage(name="denoiser", checkpoint_name=CHECKPOINT_NAME, fingerprint=fingerprint, hparams=h, n_items=n,
                  build=lambda: arch.build(kind, net_config), loss=loss,
                  export=lambda ema, step: export_component(ema, out_dir / component))
    _, denoiser_summary = run_stage(stage, out_dir, device, progress)
    summary = {
        **denoiser_summary,
        "family": plan["family"], "pipeline": PIPELINES[plan["family"]][0], "objective": plan["objective"],
        "flow_timesteps": plan["flow_timesteps"] if plan["objective"] == "flow" else None,
        "condition": plan["condition"], "cfg_dropout": rate if plan["condition"] else None,
        "denoiser": {"class": arch._CLASSES[kind], "config": net_config, "folder": component},
        "schedule": schedule.to_dict(), "scheduler": {"class": sched_class, "config": sched_config},
        "input_shape": [int(in_channels), int(size), int(size)],
        "images": int(n), "members_used": int(n), "image_shape": [int(channels), int(height), int(width)],
        "data_sha256": fingerprint["data"]["sha256"], "labels_sha256": fingerprint["labels_sha256"],
        "captions_sha256": fingerprint["captions_sha256"],
        "vae": vae_summary,
        "text_encoder": None if encoder is None else {"config": text_config, "frozen": True,
                                                      "init_seed": int(seed), "parameters": _count(encoder)},
        "conditioning": conditioning,
        "device": str(device), "total_wall_time_s": denoiser_summary["wall_time_s"]
        + (vae_summary or {}).get("wall_time_s", 0.0), "this_call_s": time.perf_counter() - started,
        "versions": _versions(), "model": str(out_dir), "metadata": dict(metadata or {}),
    }
    atomic_io.write_json(out_dir / SUMMARY_NAME, summary)
    return summary


# ---------------------------------------------------------------------- options and shapes


def _plan(condition, objective, latent, denoiser, text, cfg_dropout, flow_timesteps) -> dict[str, Any]:
    if condition not in (None, "none", "class"):
        raise ConfigError(f"--condition = {condition!r} is unknown; use none or class (text: --text)")
    condition = None if condition == "none" else condition
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective = {objective!r} is unknown; use one of {', '.join(OBJECTIVES)}")
    if flow_timesteps not in FLOW_TIMESTEPS:
        raise ConfigError(f"--flow-timesteps = {flow_timesteps!r} is unknown; use one of {', '.join(FLOW_TIMESTEPS)}")
    if denoiser not in arch.DENOISERS:
        raise ConfigError(f"--denoiser = {denoiser!r} is unknown; use one of {', '.join(arch.DENOISERS)}")
    if not (isinstance(cfg_dropout, (int, float)) and 0.0 <= float(cfg_dropout) <= 1.0):
        raise ConfigError(f"--cfg-dropout = {cfg_dropout!r} must be a probability in [0, 1]")
    if text and condition == "class":
        raise ConfigError("--text and --condition class are two different conditions; pass only one of them")
    if denoiser == "dit":
        if text:
            raise ConfigError("--denoiser dit is class-conditional; it cannot be combined with --text")
        if not latent:
            raise ConfigError("--denoiser dit trains on VAE latents (DiTPipeline layout); add --latent")
        condition = "class"  # DiT is class-conditional by construction
    latent = bool(latent or text)
    family = "text" if text else "dit" if denoiser == "dit" else "latent" if latent else "pixel"
    return {"condition": "text" if text else condition, "objective": objective, "latent": latent, "text": bool(text),
            "family": family, "cfg_dropout": float(cfg_dropout) if (condition or text) else 0.0,
            "flow_timesteps": flow_timesteps}


def _labels(plan, labels, class_names, n):
    if plan["condition"] != "class":
        return None, None
    if labels is None:
        raise ConfigError("--condition class needs one label per member image: the data have no labels; "
                          "pass --labels FILE")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
        raise InputError(f"--labels must be {n} integers, one per member image, got {labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise InputError(f"--labels holds the negative label {labels.min()}; class labels are 0 .. K-1")
    k = len(class_names) if class_names else int(labels.max()) + 1
    if class_names and labels.max() >= k:
        raise InputError(f"--labels holds label {labels.max()} but only {k} class names were given (--class-names)")
    names = [str(v) for v in class_names] if class_names else [str(v) for v in range(k)]
    return torch.from_numpy(labels.astype(np.int64)), names


def _denoiser_config(plan, size, in_channels, unet, dit, num_classes, text_settings):
    what = "latent" if plan["latent"] else "image"
    if plan["family"] == "dit":
        return "dit", arch.dit_config(sample_size=size, in_channels=in_channels, num_classes=num_classes,
                                      layers=dit["layers"], heads=dit["heads"], head_dim=dit["head_dim"],
                                      patch_size=dit["patch_size"])
    common = dict(sample_size=size, in_channels=in_channels, ch=unet["ch"], ch_mult=unet["ch_mult"],
                  attn=unet["attn"], num_res_blocks=unet["num_res_blocks"], dropout=unet["dropout"])
    if plan["text"]:
        return "unet2d_condition", arch.unet2d_condition_config(**common, cross_attention_dim=text_settings["dim"])
    classes = num_classes + 1 if plan["condition"] == "class" else None
    return "unet2d", arch.unet2d_config(**common, num_class_embeds=classes, what=what)


def _text_side(captions, out_dir: Path, settings, seed):
    from .text_encoder import build_text_encoder, build_tokenizer, text_encoder_config, write_clip_vocabulary

    staging = out_dir / ".vocabulary"
    write_clip_vocabulary(captions, staging)
    tokenizer = build_tokenizer(staging, settings["max_length"])
    config = text_encoder_config(len(tokenizer), tokenizer, dim=settings["dim"], layers=settings["layers"],
                                 heads=settings["heads"], max_length=settings["max_length"])
    encoder = build_text_encoder(config, seed)
    export_component(tokenizer, out_dir / "tokenizer")
    # The BPE files themselves too, for tokenizers that read vocab.json + merges.txt.
    for name in ("vocab.json", "merges.txt"):
        atomic_io.write_bytes(out_dir / "tokenizer" / name, (staging / name).read_bytes())
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its shard-writing bar would break train-target's own
    try:
        export_component(encoder, out_dir / "text_encoder")
    finally:
        transformers_logging.enable_progress_bar()
    shutil.rmtree(staging, ignore_errors=True)
    return tokenizer, encoder, config


def _training_source(plan, data, vae_net, device, hflip):
    """x0 for the items of a batch: pixels in [-1, 1], or member latents (precomputed, mirrored ones too)."""
    if plan["latent"]:
        latents = encode_latents(vae_net, data, device, hflip).to(device)
        n = len(data)

        def from_latents(index, generator):
            if hflip:
                flip = torch.rand(len(index), generator=generator, device=device) < 0.5
                index = index + n * flip.long()
            return latents[index]
        return from_latents

    images = torch.from_numpy(data).to(device)
    divisor = 127.5 if data.dtype == np.uint8 else 0.5

    def from_pixels(index, generator):
        x0 = images[index].float().div_(divisor).sub_(1.0)
        if hflip:
            flip = torch.rand(len(index), generator=generator, device=device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        return x0
    return from_pixels


def _condition_source(plan, labels_t, class_names, captions, tokenizer, encoder, device):
    if plan["condition"] == "class":
        return labels_t.to(device), torch.tensor(len(class_names), device=device)
    if plan["text"]:
        from .text_encoder import encode_captions

        hidden, _ = encode_captions(tokenizer, encoder, list(captions))
        empty, _ = encode_captions(tokenizer, encoder, [""])
        return hidden.to(device), empty[0].to(device)
    return None, None


def _predictor(kind):
    if kind == "dit":
        return lambda net, x, t, c: net(x, timestep=t, class_labels=c).sample
    if kind == "unet2d_condition":
        return lambda net, x, t, c: net(x, t, encoder_hidden_states=c).sample
    return lambda net, x, t, c: net(x, t, class_labels=c).sample


def _conditioning_record(plan, class_names, tokenizer):
    if plan["condition"] == "class":
        return {"kind": "class", "num_classes": len(class_names), "null_label": len(class_names),
                "class_names": list(class_names), "cfg_dropout": plan["cfg_dropout"]}
    if plan["text"]:
        from .text_encoder import TEXT_ENCODING

        return {"kind": "text", "max_length": int(tokenizer.model_max_length), **TEXT_ENCODING,
                "cfg_dropout": plan["cfg_dropout"]}
    return None


def _text_digest(captions) -> str:
    return hashlib.sha256(json.dumps(list(captions)).encode()).hexdigest()


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _versions() -> dict[str, str]:
    import diffusers

    out = {"torch": torch.__version__, "numpy": np.__version__, "diffusers": diffusers.__version__,
           "qmia_fast": own_version()}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return out

