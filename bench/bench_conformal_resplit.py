"""The conformal guarantee checked on the demo's real non-members: calibration and holdout re-split many times.

One holdout gives one draw of the decision's FPR, and its interval covers only the
holdout's sampling, not the calibration draw's. Here, for each alpha and bag seed, the
default attack is fitted once; its regressors never saw the calibration part nor the
holdout, so given them the calibration residuals and the holdout's residuals (y - T(x),
T the vote's threshold) are exchangeable if the public set is drawn like the holdout. The
pooled residuals are re-split at random into a calibration part of the same size and a
test part, the conformal shift recomputed, and the test FPR measured, many times: its mean
must be at most the bound k / (n_cal + 1) <= alpha (and near it), its spread is what one
run's FPR varies by.

    python bench/bench_conformal_resplit.py --t 100 --seeds 3 --resplits 2000 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import qmia_fast as qf
from qmia_fast.attack import QuantileAttack, vote_threshold
from qmia_fast.regress import calibration as conformal
from qmia_fast.seeds import derive_seed

sys.path.insert(0, str(Path(__file__).parent))
from bench_regressors import demo_scores  # noqa: E402


def vote_residuals(attack: QuantileAttack, images, scores) -> np.ndarray:
    quantiles = attack.bag.predict(images, calibrated=False)
    index = attack.fitted_levels.index(attack.alpha)
    return np.log(scores) - vote_threshold(quantiles[:, :, index])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, default=100)
    parser.add_argument("--alphas", default="0.001,0.005,0.01,0.05,0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resplits", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="bench-cache")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = qf.load_data("builtin")
    images, split = loaded.images, loaded.split
    scores = demo_scores(args.t, Path(args.cache), args.threads)
    public, holdout = split.public, split.holdout
    out = []
    for alpha in (float(a) for a in args.alphas.split(",")):
        observed, resplit_means, resplit_sds, bounds = [], [], [], []
        for r in range(args.seeds):
            seed = derive_seed(0, 13, r)
            attack = QuantileAttack(alpha=alpha, seed=seed, threads=args.threads, baselines=False)
            attack.fit(images[public], scores[public])
            info = attack.fit_info["calibration"]
            n_cal = info["n_calibration"]
            _, held = conformal.split_public(len(public), n_cal, derive_seed(seed, 2))
            cal = vote_residuals(attack, images[public[held]], scores[public[held]])
            test = vote_residuals(attack, images[holdout], scores[holdout])
            observed.append(float((test < conformal.conformal_shift(cal, alpha).shift).mean()))
            pooled = np.concatenate([cal, test])
            rng = np.random.default_rng(r)
            rates = np.empty(args.resplits)
            for m in range(args.resplits):
                order = rng.permutation(pooled.size)
                shift = conformal.conformal_shift(pooled[order[:n_cal]], alpha).shift
                rates[m] = (pooled[order[n_cal:]] < shift).mean()
            resplit_means.append(float(rates.mean()))
            resplit_sds.append(float(rates.std()))
            bounds.append(info["bag"]["fpr_bound"])
            print(f"alpha {alpha:g} seed {r}: n_cal {n_cal}, bound {bounds[-1]:.5f}, this holdout {observed[-1]:.4f}, "
                  f"re-split mean {rates.mean():.5f} sd {rates.std():.5f}", flush=True)
        row = {"alpha": alpha, "bound": float(np.mean(bounds)), "observed": observed,
               "resplit_mean": float(np.mean(resplit_means)), "resplit_sd": float(np.mean(resplit_sds)),
               "resplits": args.resplits, "seeds": args.seeds}
        out.append(row)
        print(f"SUMMARY alpha {alpha:g}: bound {row['bound']:.5f}; mean FPR over {args.resplits} re-splits x "
              f"{args.seeds} seeds {row['resplit_mean']:.5f} (one run's sd {row['resplit_sd']:.5f}); this holdout "
              f"{np.mean(observed):.5f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
