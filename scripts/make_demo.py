"""Regenerates the shipped demo from scratch: a Fashion-MNIST subset with a fixed split, and a target DDPM trained on its members.

Usage (from the repository root, package installed):
    apt-get install dataset-fashion-mnist        # MIT-licensed images under /usr/share/datasets/fashion-mnist/
    python scripts/make_demo.py data             # python/qmia_fast/assets/demo_data.npz + licence notice
    python scripts/make_demo.py target           # python/qmia_fast/assets/demo_target/ (qmia-fast train-target)
    python scripts/make_demo.py card [REPORT.json ...]   # python/qmia_fast/assets/demo_target/MODEL_CARD.md,
                                                 # with the results of `qmia-fast attack` runs on the demo

The split and training settings below are the documented demo; change them here, not by hand.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "python" / "qmia_fast" / "assets"
SOURCE = Path("/usr/share/datasets/fashion-mnist")
LICENCE_SOURCE = Path("/usr/share/doc/dataset-fashion-mnist/copyright")

# The demo split: disjoint random draws from the 60,000 Fashion-MNIST training images.
SPLIT_SEED = 20241128
N_MEMBERS, N_PUBLIC, N_HOLDOUT = 200, 800, 200
# More non-members, drawn afterwards from the rest (the first draw fixed the members the target
# was trained on): a 1,000-image holdout makes TPR at 1% FPR rest on 10 false positives, not 2.
N_EXTRA_PUBLIC, N_EXTRA_HOLDOUT = 1200, 800

# The demo target: a small DDPM UNet (1.1M parameters) trained on the 200 members until
# they are partly memorised. No flips and no dropout, so that they are.
TARGET_ARGS = [
    "--ch", "32", "--ch-mult", "1,2,2", "--attn", "2", "--num-res-blocks", "1", "--dropout", "0",
    "--steps", "2500", "--batch-size", "32", "--lr", "1e-3", "--warmup", "200", "--ema-decay", "0.999",
    "--grad-clip", "1.0", "--no-hflip", "--seed", "0", "--device", "cpu", "--save-every", "500",
]


def make_data() -> None:
    from qmia_fast.data import Split, load_data, save_data

    loaded = load_data(str(SOURCE), part="train")
    images, labels = loaded.images, loaded.labels
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = rng.choice(len(images), size=N_MEMBERS + N_PUBLIC + N_HOLDOUT, replace=False)
    # The demo file holds only the chosen images, in their original order; the split indexes it.
    rest = np.setdiff1d(np.arange(len(images)), chosen)
    extra = np.random.default_rng(SPLIT_SEED + 1).choice(rest, size=N_EXTRA_PUBLIC + N_EXTRA_HOLDOUT,
                                                           replace=False)
    order = np.sort(np.concatenate([chosen, extra]))
    position = {int(i): n for n, i in enumerate(order)}
    members = np.sort([position[int(i)] for i in chosen[:N_MEMBERS]])
    public = np.sort([position[int(i)] for i in np.concatenate([chosen[N_MEMBERS:N_MEMBERS + N_PUBLIC],
                                                                   extra[:N_EXTRA_PUBLIC]])])
    holdout = np.sort([position[int(i)] for i in np.concatenate([chosen[N_MEMBERS + N_PUBLIC:],
                                                                    extra[N_EXTRA_PUBLIC:]])])
    split = Split(members, public, holdout,
                  source=f"qmia-fast demo: Fashion-MNIST train images {len(members)}/{len(public)}/{len(holdout)}, "
                         f"seeds {SPLIT_SEED}, {SPLIT_SEED + 1}")
    ASSETS.mkdir(parents=True, exist_ok=True)
    save_data(ASSETS / "demo_data.npz", images[order], split=split, labels=labels[order], compressed=True)
    np.save(ASSETS / "demo_source_indices.npy", order.astype(np.int64))
    notice = ("The images in demo_data.npz are a subset of Fashion-MNIST\n"
              "(https://github.com/zalandoresearch/fashion-mnist), Copyright 2017 Zalando SE,\n"
              "used under the MIT licence below. demo_source_indices.npy gives each image's index in the\n"
              "Fashion-MNIST training set.\n\n")
    if LICENCE_SOURCE.exists():
        notice += LICENCE_SOURCE.read_text()
    (ASSETS / "FASHION_MNIST_LICENSE.txt").write_text(notice)
    print(f"wrote {ASSETS / 'demo_data.npz'}: {len(order)} images, split {len(members)}/{len(public)}/{len(holdout)}")


def train_target(extra: list[str]) -> None:
    keep_checkpoint = "--keep-checkpoint" in extra
    extra = [arg for arg in extra if arg != "--keep-checkpoint"]
    out = ASSETS / "demo_target"
    command = [sys.executable, "-m", "qmia_fast", "train-target", "--data", str(ASSETS / "demo_data.npz"),
               "--out", str(out), *TARGET_ARGS, *extra]
    print("$", " ".join(shlex.quote(c) for c in command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    print(f"done in {time.time() - started:.0f} s")
    # Only the EMA weights and config ship; the resumable training checkpoint stays out of the wheel.
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not keep_checkpoint:
        (ROOT / "build").mkdir(exist_ok=True)
        shutil.move(str(checkpoint), str(ROOT / "build" / "demo_target_checkpoint.pt"))


# What the demo scores with when no --method is given. A small DDPM trained for under an
# hour on two CPU cores has memorised its members only partly: its noise-prediction loss
# separates members from non-members far better than SecMI's t-error does (both measured
# in MODEL_CARD.md; at 750 steps of an earlier 32-member target the t-error even ranked
# them the wrong way round). SecMI's t-error becomes the strong score once a model
# memorises as hard as SecMI's 800k-step CIFAR targets (an ideal memoriser:
# tests/test_scoring_semantics.py).
RECOMMENDED_SCORE = {"method": "loss", "t": 200, "n_draws": 1,
                     "why": "the demo target's membership signal is in the loss score; see its MODEL_CARD.md"}


def _results_section(reports: list[str]) -> str:
    """Markdown table of `qmia-fast attack` reports on the demo (report.json paths), as measured."""
    if not reports:
        return ""
    rows = ["| score | method | AUC | TPR@1%FPR | TPR@0.1%FPR | FPR of the 1% decision | scoring + fit |",
            "|---|---|---|---|---|---|---|"]
    for path in reports:
        report = json.loads(Path(path).read_text())
        config = report.get("config", {})
        score = config.get("method", "?")
        if score == "secmi":
            score += f" (t_sec {config.get('t_sec')}, k {config.get('k')})"
        else:
            score += f" (t {config.get('t')})"
        timings = report.get("timings_s", {})
        for name, row in report["methods"].items():
            rows.append(f"| {score} | {row['title']} | {row['auc']:.4f} | {100 * row['tpr_at_fpr']['1%']:.1f}% | "
                        f"{100 * row['tpr_at_fpr']['0.1%']:.1f}% | {100 * row['decision']['fpr']:.1f}% | "
                        f"{timings.get('score_s', 0):.0f} s + {timings.get('fit_s', 0):.0f} s |")
        created = report.get("created_utc", "")[:10]
    return ("\n## Membership signal, measured\n\n"
            f"`qmia-fast attack` on the demo split (200 members against 1,000 holdout non-members; the\n"
            f"bag fitted on the 2,000 public non-members), CPU fp32, 2 cores, {created}:\n\n"
            + "\n".join(rows) + "\n\n"
            "`qmia-fast attack` uses the loss score by default for this model (config.json\n"
            "`metadata.recommended_score`); `--method secmi` gives the SecMI rows.\n")


def write_card(reports: list[str]) -> None:
    from qmia_fast import atomic_io

    out = ASSETS / "demo_target"
    summary = json.loads((out / "train_summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    metadata = config.setdefault("metadata", {})
    metadata["recommended_score"] = RECOMMENDED_SCORE
    # Paths of the machine that trained it mean nothing in a wheel; say what the data is instead.
    metadata["data"] = "demo_data.npz (shipped beside this folder)"
    metadata["data_description"] = (f"the {N_MEMBERS} member images of demo_data.npz (Fashion-MNIST train "
                                    f"images, split seed {SPLIT_SEED}), 1 x 28 x 28 uint8")
    atomic_io.write_json(out / "config.json", config)
    summary["model"] = "demo_target"
    summary["metadata"] = {k: metadata[k] for k in ("data", "n_members", "data_description") if k in metadata}
    atomic_io.write_json(out / "train_summary.json", summary)
    card = f"""# Demo target model card

A DDPM (Ho et al. UNet, pytorch-ddpm layout) trained by `qmia-fast train-target` on the
{N_MEMBERS} member images of `../demo_data.npz` only (split seed {SPLIT_SEED}); the public and
holdout images were never seen. It is deliberately over-trained so that it memorises its members,
which is what a membership audit must detect.

- Command: `python scripts/make_demo.py target`, i.e.
  `qmia-fast train-target --data demo_data.npz --out demo_target {' '.join(TARGET_ARGS)}`
- Architecture: {json.dumps(config.get('unet'))}
- Schedule: {json.dumps(config.get('schedule'))}
- Steps: {summary['steps']}; wall time: {summary['wall_time_s'] / 60:.1f} min on {summary.get('device', 'cpu')}
  (a 2-core CPU); final training loss (mean of the last {summary.get('final_loss_window')} steps):
  {summary['final_loss_mean']:.4f}
- Weights: `model.pt` (EMA, a plain state dict; loads with `torch.load(weights_only=True)`).
{_results_section(reports)}"""
    (out / "MODEL_CARD.md").write_text(card)
    print(card)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("data", "target", "card"):
        print(__doc__)
        raise SystemExit(2)
    if argv[0] == "data":
        make_data()
    elif argv[0] == "target":
        train_target(argv[1:])
    else:
        write_card(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
