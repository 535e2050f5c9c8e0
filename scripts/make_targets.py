"""Regenerates the five memorising targets of the new model families from scratch with `qmia-fast train-target`.

Usage (from the repository root, package installed with the diffusers extra and transformers):
    apt-get install dataset-fashion-mnist            # the VAE's non-member images
    python scripts/make_targets.py data              # ROOT/data: VAE images, captioned image folder + split
    python scripts/make_targets.py NAME [...]        # one target: class-unet flow-unet latent-unet dit text-latent
    python scripts/make_targets.py all               # data, then the five targets in order, one at a time
    python scripts/make_targets.py check [NAME ...]  # members vs public non-members denoising loss (t = 100..200)
    python scripts/make_targets.py table             # docs/targets.md's table from the summaries and the check

ROOT is /work/targets unless QMIA_TARGETS_ROOT says otherwise; weights stay out of the repository.
Every target trains on the 200 members of the demo data only; the VAE on Fashion-MNIST training
images that are in none of the demo's sets (members, public, holdout). Run them one at a time:
each uses one torch thread and runs under `nice` when started by `all`.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("QMIA_TARGETS_ROOT", "/work/targets"))
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "python" / "qmia_fast" / "assets" / "demo_data.npz"
DEMO_SOURCE_INDICES = REPO / "python" / "qmia_fast" / "assets" / "demo_source_indices.npy"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

VAE_IMAGES_SEED, N_VAE_IMAGES = 20261202, 10000
CAPTION_SEED = 0
VAE_IMAGES = ROOT / "data" / "vae_images.npy"
CAPTIONED = ROOT / "data" / "demo_captioned"     # the demo images as PNGs + metadata.jsonl
CAPTIONED_SPLIT = ROOT / "data" / "demo_split.npz"

# Shared by every target: members only, no flips or dropout (so that they memorise), EMA 0.999, one thread.
COMMON = ["--data", "builtin", "--no-hflip", "--dropout", "0", "--seed", "0", "--device", "cpu", "--threads", "1",
          "--ema-decay", "0.999", "--grad-clip", "1.0", "--lr", "1e-3", "--batch-size", "32", "--save-every", "250"]
PIXEL_UNET = ["--ch", "32", "--ch-mult", "1,2,2", "--attn", "2", "--num-res-blocks", "1"]
LATENT_VAE = ["--vae-data", str(VAE_IMAGES), "--vae-ch", "16,32", "--latent-channels", "4", "--kl-weight", "1e-3",
              "--vae-steps", "800", "--vae-batch-size", "64", "--vae-lr", "1e-3"]

TARGETS: dict[str, list[str]] = {
    "class-unet": [*COMMON, "--condition", "class", *PIXEL_UNET, "--steps", "2000", "--warmup", "100"],
    "flow-unet": [*COMMON, "--objective", "flow", "--condition", "class", *PIXEL_UNET, "--steps", "2000",
                  "--warmup", "100"],
    "latent-unet": [*COMMON, "--latent", *LATENT_VAE, "--ch", "32", "--ch-mult", "1,2", "--attn", "1",
                    "--num-res-blocks", "1", "--steps", "1500", "--warmup", "100"],
    "dit": [*COMMON, "--latent", "--denoiser", "dit", "--vae", str(ROOT / "latent-unet"), "--dit-layers", "4",
            "--dit-heads", "4", "--dit-head-dim", "32", "--patch-size", "2", "--steps", "3000", "--warmup", "100"],
    "text-latent": [*[a if a != "builtin" else str(CAPTIONED) for a in COMMON], "--split", str(CAPTIONED_SPLIT),
                    "--text", "--vae", str(ROOT / "latent-unet"), "--ch", "32", "--ch-mult", "1,2", "--attn", "1",
                    "--num-res-blocks", "1", "--text-dim", "64", "--text-layers", "2", "--text-heads", "4",
                    "--text-max-length", "16", "--steps", "1500", "--warmup", "100"],
}
ORDER = ["class-unet", "flow-unet", "latent-unet", "dit", "text-latent"]


def make_data() -> None:
    from qmia_fast.data import load_data, save_split
    from qmia_fast.training.captions import FASHION_MNIST_CLASSES, captions_from_labels, write_captioned_folder

    demo = load_data("builtin")
    # VAE images: Fashion-MNIST training images in none of the demo's sets, and no exact copy of a demo image.
    source = load_data(str(FASHION_MNIST), part="train").images
    used = np.load(DEMO_SOURCE_INDICES)
    rest = np.setdiff1d(np.arange(len(source)), used)
    demo_bytes = {image.tobytes() for image in demo.images}
    rest = np.array([i for i in rest if source[i].tobytes() not in demo_bytes])
    chosen = np.sort(np.random.default_rng(VAE_IMAGES_SEED).choice(rest, size=N_VAE_IMAGES, replace=False))
    VAE_IMAGES.parent.mkdir(parents=True, exist_ok=True)
    np.save(VAE_IMAGES, source[chosen])
    np.save(VAE_IMAGES.with_name("vae_source_indices.npy"), chosen.astype(np.int64))
    print(f"wrote {VAE_IMAGES}: {len(chosen)} Fashion-MNIST train images outside the demo's {len(used)}")
    captions = captions_from_labels(demo.labels, FASHION_MNIST_CLASSES, seed=CAPTION_SEED)
    write_captioned_folder(demo.images, captions, CAPTIONED)
    save_split(CAPTIONED_SPLIT, demo.split)
    print(f"wrote {CAPTIONED}: {len(captions)} PNGs + metadata.jsonl; split {CAPTIONED_SPLIT}")


def command(name: str) -> list[str]:
    return [sys.executable, "-m", "qmia_fast", "train-target", "--out", str(ROOT / name), *TARGETS[name]]


def train(name: str) -> None:
    args = command(name)
    print("$", " ".join(shlex.quote(a) for a in args), flush=True)
    started = time.time()
    subprocess.run(args, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"{name}: done in {time.time() - started:.0f} s", flush=True)


def table() -> None:
    import json

    checks = ROOT / "membership_check.json"
    check = json.loads(checks.read_text()) if checks.is_file() else {}
    print("| target | denoiser | parameters | steps | final loss (mean of last 100) | wall time | VAE | "
          "member loss | public loss | gap | AUC |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ORDER:
        path = ROOT / name / "train_summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        vae = s.get("vae") or {}
        vae_text = ("reused" if "reused_from" in vae else
                    f"{vae.get('parameters')} params, {vae.get('steps')} steps, {vae.get('wall_time_s', 0) / 60:.1f} min, "
                    f"loss {vae.get('final_loss_mean', float('nan')):.4f}, scaling {vae.get('scaling_factor', 0):.4f}"
                    ) if vae else "-"
        c = check.get(name, {})
        row = [name, s["denoiser"]["class"], str(s["parameters"]), str(s["steps"]), f"{s['final_loss_mean']:.4f}",
               f"{s['wall_time_s'] / 60:.1f} min", vae_text]
        row += [f"{c['member_loss']:.4f}", f"{c['public_loss']:.4f}", f"{c['gap']:.4f}", f"{c['auc']:.3f}"] if c \
            else ["-"] * 4
        print("| " + " | ".join(row) + " |")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "table":
        return table()
    if not argv or argv[0] not in ("data", "all", "check", *TARGETS):
        print(__doc__)
        raise SystemExit(2)
    if argv[0] == "data":
        make_data()
    elif argv[0] == "all":
        os.nice(10)
        make_data()
        for name in ORDER:
            train(name)
    elif argv[0] == "check":
        from check_targets import check_all  # scripts/check_targets.py

        check_all(ROOT, argv[1:] or ORDER)
    else:
        for name in argv:
            train(name)


if __name__ == "__main__":
    main(sys.argv[1:])
