"""Regressor settings and calibration compared on the demo's scores over bag seeds: TPR@1%FPR, decision FPR, fit time.

Scores every demo image once per loss timestep (the CLI's noise: seed 0, global indices;
cached as loss_t<T>.npz under --cache), then fits QuantileAttack once per setting and bag
seed (the experiments' seeds, derive_seed(0, 13, r)) and prints mean +- sd over seeds of
the bag's, the single regressor's and the marginal threshold's TPR@1%FPR and observed FPR
of the alpha decision, with the fit's wall and CPU (process) time:

    python bench/bench_regressors.py --t 100 --seeds 5 \\
        --settings paper:none full-gaussian:none auto:conformal --out regressors.jsonl

A setting is REGRESSOR:CALIBRATION[:key=value,...] (extra QuantileAttack options, e.g.
auto:conformal:fit_budget=150). Nothing is asserted; every figure is measured in this run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import qmia_fast as qf
from qmia_fast import metrics
from qmia_fast.attack import QuantileAttack
from qmia_fast.seeds import derive_seed


def demo_scores(t: int, cache: Path, threads: int) -> np.ndarray:
    path = cache / f"loss_t{t}.npz"
    if path.is_file():
        return np.load(path)["scores"]
    model, loaded = qf.load_model("builtin"), qf.load_data("builtin")
    scorer = qf.Scorer(model, "loss", t=t, seed=0, precision="fp32", threads=threads)
    scores = scorer.score(loaded.images, indices=np.arange(len(loaded.images)))
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, scores=scores)
    return scores


def parse_setting(text: str) -> tuple[str, dict]:
    regressor, calibration, *rest = text.split(":")
    options = {"regressor": regressor, "calibration": calibration}
    for item in (rest[0].split(",") if rest else []):
        key, value = item.split("=")
        options[key] = json.loads(value)
    return text, options


def run_setting(name: str, options: dict, t: int, seeds: int, alpha: float, images, split, scores, threads: int):
    evaluation = np.concatenate([split.members, split.holdout])
    labels = np.r_[np.ones(len(split.members), int), np.zeros(len(split.holdout), int)]
    rows = []
    for r in range(seeds):
        wall, cpu = time.perf_counter(), time.process_time()
        attack = QuantileAttack(alpha=alpha, seed=derive_seed(0, 13, r), threads=threads, **options)
        attack.fit(images[split.public], scores[split.public])
        row = {"seed": r, "fit_wall_s": time.perf_counter() - wall, "fit_cpu_s": time.process_time() - cpu,
               "chosen": attack.fit_info["selection"]["chosen"],
               "losses": {c["name"]: c["validation_pinball_loss"]
                          for c in attack.fit_info["selection"]["candidates"] if c["skipped"] is None},
               "methods": {}}
        result = attack.predict(images[evaluation], scores[evaluation])
        for method, verdict in result.methods().items():
            counts = metrics.decision_counts(verdict.decision, labels)
            row["methods"][method] = {"tpr_at_1pct": float(metrics.tpr_at_fpr(verdict.score, labels, 0.01)),
                                      "auc": float(metrics.auc(verdict.score, labels)),
                                      "decision_fpr": counts["fp"] / counts["n_nonmembers"],
                                      "decision_tpr": counts["tp"] / counts["n_members"]}
        rows.append(row)
        bag = row["methods"]["qmia_bag"]
        print(f"{name} t={t} seed {r}: {row['chosen']}, bag TPR@1%FPR {100 * bag['tpr_at_1pct']:.1f}%, FPR "
              f"{100 * bag['decision_fpr']:.2f}%, fit {row['fit_wall_s']:.1f} s wall {row['fit_cpu_s']:.1f} s CPU",
              flush=True)

    def stat(values):
        values = np.asarray(values)
        return f"{100 * values.mean():.1f} +- {100 * values.std(ddof=1) if len(values) > 1 else 0.0:.1f}%"

    parts = [f"{m}: TPR@1%FPR {stat([r['methods'][m]['tpr_at_1pct'] for r in rows])}, FPR "
             f"{stat([r['methods'][m]['decision_fpr'] for r in rows])}" for m in rows[0]["methods"]]
    print(f"SUMMARY {name} t={t}: " + "; ".join(parts) + f"; fit {np.mean([r['fit_wall_s'] for r in rows]):.1f} s "
          f"wall, {np.mean([r['fit_cpu_s'] for r in rows]):.1f} s CPU", flush=True)
    return {"setting": name, "options": options, "t": t, "alpha": alpha, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", default="100", help="loss timesteps, comma-separated")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--settings", nargs="+", default=["paper:none", "auto:conformal"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="bench-cache")
    parser.add_argument("--out", default=None, help="append one JSON line per setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = qf.load_data("builtin")
    for t in (int(v) for v in args.t.split(",")):
        scores = demo_scores(t, Path(args.cache), args.threads)
        for text in args.settings:
            name, options = parse_setting(text)
            out = run_setting(name, options, t, args.seeds, args.alpha, loaded.images, loaded.split, scores,
                              args.threads)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
