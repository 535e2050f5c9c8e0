"""Does the regressor gain from the scorer's intermediates? The loss score's x_t as extra channels, on the demo target.

The scorer does not return intermediates (yet), so this recomputes them in plain torch with
the scorer's own noise: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, eps from
kernels.noise_inject keyed by (seed, global sample index), exactly as the loss scorer draws
it; the script checks that the recomputed score equals the scorer's. Then it fits the
attack with and without x_t as an extra channel, over bag seeds, on the same scores:

    python bench/bench_aux_channels.py --t 100 --seeds 5 --threads 1 --out aux.json

Only x_t (equivalently the noise draw) is a fair extra input: the model's prediction
eps_theta(x_t) together with eps gives the score itself, so a regressor that saw it would
learn the score and leave no margin for members.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

import qmia_fast as qf
from qmia_fast import kernels, metrics
from qmia_fast.attack import BAG, SINGLE, QuantileAttack
from qmia_fast.scoring import to_model_range
from qmia_fast.seeds import derive_seed


def loss_intermediates(model, images: np.ndarray, t: int, seed: int, batch: int = 64):
    """(x_t float32 N x C x H x W, recomputed loss scores float64 [N]) with the scorer's noise keyed by image index."""
    a = float(model.schedule.sqrt_abar_at(t))
    b = float(model.schedule.sqrt_one_minus_abar_at(t))
    xs, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x0 = to_model_range(torch.from_numpy(images[start:start + batch]))
            ids = torch.arange(start, start + len(x0), dtype=torch.long)
            x_t, eps = kernels.noise_inject(x0, a, b, seed, samples=ids, return_noise=True)
            eps_hat = model(x_t, torch.full((len(x0),), t, dtype=torch.long))
            scores.append(((eps_hat.double() - eps.double()) ** 2).flatten(1).sum(1).numpy())
            xs.append(x_t.numpy())
    return np.concatenate(xs), np.concatenate(scores)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = qf.load_model("builtin")
    loaded = qf.load_data("builtin")
    images, split = loaded.images, loaded.split
    scorer = qf.Scorer(model, "loss", t=args.t, seed=0, precision="fp32", threads=args.threads)
    t0 = time.perf_counter()
    scores = scorer.score(images, indices=np.arange(len(images)))
    x_t, recomputed = loss_intermediates(model, images, args.t, seed=0)
    relative = np.abs(recomputed - scores) / scores
    out = {"t": args.t, "seeds": args.seeds, "regressor": args.regressor, "calibration": args.calibration,
           "machine": platform.processor() or platform.machine(), "scoring_s": time.perf_counter() - t0,
           "recomputed_vs_scorer_max_rel": float(relative.max()), "rows": []}
    print(f"loss t={args.t}: recomputed score vs scorer max relative difference {relative.max():.2e}", flush=True)
    evaluation = np.concatenate([split.members, split.holdout])
    labels = np.r_[np.ones(len(split.members), int), np.zeros(len(split.holdout), int)]
    for variant in ("image", "image + x_t"):
        aux_public = x_t[split.public] if variant != "image" else None
        aux_eval = x_t[evaluation] if variant != "image" else None
        for r in range(args.seeds):
            seed = derive_seed(0, 13, r)  # the experiments' bag seeds
            wall, cpu = time.perf_counter(), time.process_time()
            attack = QuantileAttack(alpha=0.01, seed=seed, regressor=args.regressor, calibration=args.calibration,
                                    threads=args.threads)
            attack.fit(images[split.public], scores[split.public], aux=aux_public)
            fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
            result = attack.predict(images[evaluation], scores[evaluation], aux=aux_eval)
            chosen = attack.fit_info["selection"]
            loss = {c["name"]: c["validation_pinball_loss"] for c in chosen["candidates"] if c["skipped"] is None}
            row = {"variant": variant, "seed": r, "chosen": chosen["chosen"], "validation_loss": loss[chosen["chosen"]],
                   "fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu}
            for name, method in result.methods().items():
                counts = metrics.decision_counts(method.decision, labels)
                row[name] = {"tpr_at_1pct": float(metrics.tpr_at_fpr(method.score, labels, 0.01)),
                             "auc": float(metrics.auc(method.score, labels)),
                             "decision_fpr": counts["fp"] / counts["n_nonmembers"]}
            out["rows"].append(row)
            print(f"{variant:12s} seed {r}: {row['chosen']} held-out pinball {row['validation_loss']:.5f}, "
                  f"bag TPR@1%FPR {100 * row[BAG]['tpr_at_1pct']:.1f}% single {100 * row[SINGLE]['tpr_at_1pct']:.1f}%"
                  f", fit {fit_wall:.1f} s wall {fit_cpu:.1f} s CPU", flush=True)
    for variant in ("image", "image + x_t"):
        rows = [r for r in out["rows"] if r["variant"] == variant]
        tpr = np.array([r[BAG]["tpr_at_1pct"] for r in rows])
        loss = np.array([r["validation_loss"] for r in rows])
        print(f"{variant:12s}: bag TPR@1%FPR {100 * tpr.mean():.1f} +- {100 * tpr.std(ddof=1):.1f}%, held-out pinball "
              f"{loss.mean():.5f} +- {loss.std(ddof=1):.5f}", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--regressor", default="full")
    parser.add_argument("--calibration", default="conformal")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
