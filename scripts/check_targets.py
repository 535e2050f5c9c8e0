"""Plain-torch membership check of the make_targets.py targets: denoising loss at t = 100..200, members vs public non-members.

Loads each folder with diffusers itself (not qmia-fast's loaders), computes every image's loss
mean over t in TIMESTEPS of |pred - target|^2 (target eps for DDPM, eps - z0 for flow), with fixed
noise per image, under the image's own condition; prints the mean loss of the 200 members and of
the 2,000 public non-members, their gap, and the AUC of -loss (qmia_fast.metrics.auc).
Usage: python scripts/check_targets.py [ROOT] [NAME ...]   (or: make_targets.py check)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

TIMESTEPS = (100, 150, 200)
NOISE_SEED = 1234
BATCH = 100


def _load(folder: Path):
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    component = "transformer" if "transformer" in index else "unet"
    net = getattr(diffusers, index[component][1]).from_pretrained(folder / component).eval()
    vae = None
    for name in ("vae", "vqvae"):
        if name in index:
            vae = diffusers.AutoencoderKL.from_pretrained(folder / name).eval()
    text = None
    if "text_encoder" in index:
        import transformers

        text = (transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval())
    cond_path = folder / "conditioning.json"
    conditioning = json.loads(cond_path.read_text()) if cond_path.is_file() else None
    return index, scheduler, component, net, vae, text, conditioning


@torch.no_grad()
def losses(folder: Path, images: np.ndarray, labels: np.ndarray, captions: list[str] | None, ids: np.ndarray):
    """Per-image mean denoising loss over TIMESTEPS (images uint8; ids: each image's global index, keys its noise)."""
    index, scheduler, component, net, vae, text, conditioning = _load(folder)
    flow = scheduler["_class_name"].startswith("FlowMatch")
    T = int(scheduler["num_train_timesteps"])
    if not flow:
        betas = np.linspace(scheduler["beta_start"], scheduler["beta_end"], T, dtype=np.float64)
        abar = np.cumprod(1.0 - betas)
    out = np.zeros(len(images))
    for start in range(0, len(images), BATCH):
        x = torch.from_numpy(images[start:start + BATCH]).float() / 127.5 - 1.0
        z0 = x if vae is None else vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        kwargs = {}
        if conditioning and conditioning["kind"] == "class":
            kwargs["class_labels"] = torch.from_numpy(labels[start:start + BATCH]).long()
        if text is not None:
            tokenizer, encoder = text
            ids_t = tokenizer(captions[start:start + BATCH], padding="max_length",
                              max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
            kwargs["encoder_hidden_states"] = encoder(ids_t)[0]
        total = torch.zeros(len(x), dtype=torch.float64)
        for t in TIMESTEPS:
            eps = torch.stack([torch.randn(z0.shape[1:], generator=torch.Generator().manual_seed(
                NOISE_SEED * 100003 + int(i) * 1009 + t)) for i in ids[start:start + BATCH]])
            if flow:
                s = t / T
                xt, target, step = (1 - s) * z0 + s * eps, eps - z0, torch.full((len(x),), float(t))
            else:
                xt = float(np.sqrt(abar[t])) * z0 + float(np.sqrt(1 - abar[t])) * eps
                target, step = eps, torch.full((len(x),), t, dtype=torch.long)
            if component == "transformer":
                pred = net(xt, timestep=step, **kwargs).sample
            else:
                pred = net(xt, step, **kwargs).sample
            total += (pred[:, :z0.shape[1]] - target).pow(2).flatten(1).mean(1).double()
        out[start:start + BATCH] = (total / len(TIMESTEPS)).numpy()
    return out


def check(folder: Path) -> dict:
    from qmia_fast import load_data
    from qmia_fast.metrics import auc

    demo = load_data("builtin")
    split = demo.split
    captions = None
    metadata = Path(folder).parent / "data" / "demo_captioned" / "metadata.jsonl"
    if (folder / "text_encoder").is_dir():
        captions = [json.loads(line)["text"] for line in metadata.read_text().splitlines() if line]
    started = time.time()
    result = {}
    for name, ids in (("members", split.members), ("public", split.public)):
        caps = None if captions is None else [captions[i] for i in ids]
        result[name] = losses(folder, demo.images[ids], demo.labels[ids], caps, np.asarray(ids))
    scores = np.concatenate([-result["members"], -result["public"]])
    labels = np.concatenate([np.ones(len(result["members"])), np.zeros(len(result["public"]))])
    return {"target": folder.name, "member_loss": float(result["members"].mean()),
            "public_loss": float(result["public"].mean()),
            "gap": float(result["public"].mean() - result["members"].mean()),
            "ratio": float(result["public"].mean() / result["members"].mean()),
            "auc": auc(scores, labels), "seconds": time.time() - started,
            "n_members": int(len(result["members"])), "n_public": int(len(result["public"])),
            "timesteps": list(TIMESTEPS)}


def check_all(root: Path, names) -> None:
    torch.set_num_threads(1)
    rows = []
    for name in names:
        row = check(Path(root) / name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(root) / "membership_check.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    previous.update({row["target"]: row for row in rows})
    out.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    args = sys.argv[1:]
    root = Path(args.pop(0)) if args and Path(args[0]).is_dir() and not (Path(args[0]) / "model_index.json").exists() \
        else Path("/work/targets")
    check_all(root, args or ["class-unet", "flow-unet", "latent-unet", "dit", "text-latent"])
