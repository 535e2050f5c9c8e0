"""Benchmarks of the quantile attack: bag training batched vs looped, prediction throughput, vote kernel vs numpy, synthetic accuracy.

Run from the repository root (the package installed, or PYTHONPATH=python):

    python bench/bench_attack.py                    # train + predict + vote at the demo size
    python bench/bench_attack.py train --size 32 --channels 3 --n 5000
    python bench/bench_attack.py synthetic --seeds 5   # bag vs single regressor vs marginal threshold

Every figure is a ratio or a time measured in the same run; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qmia_fast import metrics, regress
from qmia_fast.attack import BAG, QuantileAttack, majority_vote, synthetic_problem
from qmia_fast.benchmark import best_wall


def _images(n: int, channels: int, size: int, seed: int = 0):
    problem = synthetic_problem(n, image_size=size, seed=seed)
    images = np.repeat(problem.images, channels, axis=1)
    return images, np.log(problem.scores)


def _best_cpu_of(fn, repeats: int) -> tuple[float, float]:
    """(fastest wall time, fastest process CPU time): on a busy machine CPU time shows the work itself."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def bench_train(args) -> dict:
    """Seconds per bag epoch, the bag trained as one grouped network against a loop over members."""
    images, targets = _images(args.n, args.channels, args.size)
    seeds = [regress.derive_seed(0, 0, j) for j in range(args.models)]
    plans = regress.bootstrap_plans(args.n, seeds, 0.1)
    out = {"n": args.n, "image": [args.channels, args.size, args.size], "models": args.models,
           "epochs_timed": args.epochs, "device": args.device}
    for batched in (True, False):
        # patience >= epochs: both variants run every epoch, so the times compare like with like.
        config = regress.RegressorConfig(epochs=args.epochs, patience=args.epochs, batched=batched,
                                         device=args.device, width=args.width, depth=args.depth,
                                         batch_size=args.batch_size, threads=args.threads)
        wall, cpu = _best_cpu_of(lambda: regress.fit_bag(images, targets, plans, seeds, [0.01], config),
                                 args.repeats)
        kind = "batched" if batched else "loop"
        out[f"{kind}_s_per_epoch"] = wall / args.epochs
        out[f"{kind}_cpu_s_per_epoch"] = cpu / args.epochs
    out["loop_over_batched"] = out["loop_s_per_epoch"] / out["batched_s_per_epoch"]
    out["loop_over_batched_cpu"] = out["loop_cpu_s_per_epoch"] / out["batched_cpu_s_per_epoch"]
    out["parameters_per_regressor"] = regress.count_parameters(
        regress.BaggedResNet(1, args.channels, 1, args.width, args.depth,
                             stem_stride=regress.auto_stem_stride(args.size, args.size)))
    return out


def bench_default_fit(args) -> dict:
    """A whole default QuantileAttack.fit (bag + single regressor, early stopping) at this size."""
    images, targets = _images(args.n, args.channels, args.size)
    out = {"n": args.n, "image": [args.channels, args.size, args.size]}
    for batched in (True, False):
        attack = QuantileAttack(n_models=args.models, device=args.device, batched=batched, baselines=False,
                                threads=args.threads)
        wall, cpu = _best_cpu_of(lambda: attack.fit(images, np.exp(targets)), 1)
        kind = "batched" if batched else "loop"
        out.update({f"{kind}_bag_fit_s": wall, f"{kind}_bag_fit_cpu_s": cpu,
                    f"{kind}_epochs_run": attack.bag.history.epochs_run})
    attack = QuantileAttack(n_models=args.models, device=args.device, threads=args.threads)
    started = time.perf_counter()
    attack.fit(images, np.exp(targets))
    total = time.perf_counter() - started
    return {**out, "default_fit_total_s": total,
            **{k: v for k, v in attack.fit_info["timings"].items()},
            "epochs_run": attack.bag.history.epochs_run, "best_epoch": attack.bag.history.best_epoch}


def bench_predict(args) -> dict:
    """Images per second through a fitted bag (all members at once), CPU or CUDA."""
    images, targets = _images(args.n, args.channels, args.size)
    seeds = [regress.derive_seed(0, 0, j) for j in range(args.models)]
    plans = regress.bootstrap_plans(args.n, seeds, 0.1)
    config = regress.RegressorConfig(epochs=1, device=args.device, width=args.width, depth=args.depth,
                                     threads=args.threads)
    bag = regress.fit_bag(images, targets, plans, seeds, [0.01], config)
    many = np.concatenate([images] * max(1, args.predict_n // args.n))[:args.predict_n]
    bag.predict(many[:256])  # warm-up
    seconds = best_wall(lambda: bag.predict(many, batch_size=1024, threads=args.threads), args.repeats)
    return {"images": len(many), "models": args.models, "seconds": seconds,
            "images_per_s": len(many) / seconds, "regressor_evals_per_s": len(many) * args.models / seconds}


def bench_vote(args) -> dict:
    """The compiled vote kernel against the same computation in numpy, N samples x B models."""
    rng = np.random.default_rng(0)
    n = args.vote_n
    scores = rng.normal(size=n)
    thresholds = scores[None, :] + rng.normal(size=(args.models, n))

    def numpy_vote():
        votes = (scores[None, :] < thresholds).sum(axis=0)
        return votes, 2 * votes > args.models, (thresholds - scores[None, :]).mean(axis=0)

    kernel_s = best_wall(lambda: majority_vote(scores, thresholds), args.repeats)
    numpy_s = best_wall(numpy_vote, args.repeats)
    return {"n": n, "models": args.models, "kernel_s": kernel_s, "numpy_s": numpy_s,
            "numpy_over_kernel": numpy_s / kernel_s}


def run_synthetic(args) -> dict:
    """Bag vs single regressor vs marginal threshold on the heteroscedastic synthetic problem, per seed."""
    rows = []
    for seed in range(args.seeds):
        public = synthetic_problem(args.n, image_size=args.size, seed=1000 + seed)
        evaluation = synthetic_problem(args.eval_n, args.eval_n, image_size=args.size, seed=2000 + seed)
        options = json.loads(args.options) if args.options else {}
        options.setdefault("threads", args.threads)
        attack = QuantileAttack(alpha=0.01, n_models=args.models, seed=seed, device=args.device, **options)
        attack.fit(public.images, public.scores)
        result = attack.predict(evaluation.images, evaluation.scores)
        row = {"seed": seed, "fit_s": attack.fit_info["timings"]["fit_total_s"]}
        for name, method in result.methods().items():
            summary = metrics.summarize(method.score, evaluation.labels, method.decision)
            row[name] = {"auc": summary["auc"], "tpr_at_1%": summary["tpr_at_fpr"]["1%"],
                         "tpr_at_0.1%": summary["tpr_at_fpr"]["0.1%"],
                         "decision_fpr": summary["decision"]["fpr"], "decision_tpr": summary["decision"]["tpr"]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    mean = {name: {key: float(np.mean([r[name][key] for r in rows])) for key in rows[0][name]} for name in names}
    spread = {name: {key: float(np.std([r[name][key] for r in rows], ddof=1)) if len(rows) > 1 else 0.0
                     for key in rows[0][name]} for name in names}
    wins = sum(r[BAG]["tpr_at_1%"] > r["single_regressor"]["tpr_at_1%"] for r in rows) if "single_regressor" in names else None
    return {"n_public": args.n, "n_eval_each_class": args.eval_n, "image_size": args.size,
            "options": args.options, "seeds": args.seeds, "mean": mean, "std": spread,
            "bag_beats_single_at_tpr1_in_seeds": wins, "per_seed": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "train", "fit", "predict", "vote", "synthetic"])
    parser.add_argument("--n", type=int, default=2000, help="public images (train, fit, synthetic)")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--models", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed in `train`")
    parser.add_argument("--width", type=int, default=regress.RegressorConfig.width)
    parser.add_argument("--depth", type=int, default=regress.RegressorConfig.depth)
    parser.add_argument("--batch-size", type=int, default=regress.RegressorConfig.batch_size)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=regress.RegressorConfig.threads,
                        help="torch intra-op threads for the regressors (default: the package default)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--predict-n", type=int, default=20000)
    parser.add_argument("--vote-n", type=int, default=1_000_000)
    parser.add_argument("--seeds", type=int, default=5, help="synthetic: seeds to average over")
    parser.add_argument("--eval-n", type=int, default=20000, help="synthetic: evaluation images per class")
    parser.add_argument("--options", default=None, help="synthetic: QuantileAttack options as JSON")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "regressor_threads": args.threads,
                           "device": args.device}}
    chosen = ["train", "predict", "vote"] if args.what == "all" else [args.what]
    runners = {"train": bench_train, "fit": bench_default_fit, "predict": bench_predict, "vote": bench_vote,
               "synthetic": run_synthetic}
    for name in chosen:
        results[name] = runners[name](args)
        print(f"{name}: {json.dumps(results[name], default=float)}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
