"""SecMI t-errors at fp32, bf16 and mixed precision on the demo target: how far each is from fp32 and what it does to the attack's raw-score ROC.

    python bench/bench_secmi_precision.py [--members 200] [--holdout 200] [--out secmi_precision.json]

Scores the first --members members and --holdout holdout images of the shipped demo with
SecMI's t-error (t_sec 100, k 10) at fp32 with direct convolutions (the reference), bf16
and mixed (bf16 inversion, fp32 round trip), and reports per precision the median and
largest relative difference from the reference, the Spearman rank correlation, and the
AUC and TPR at 1% FPR of the raw t-error (lower = member). Nothing is asserted. On a CPU
without bf16 hardware bf16 is emulated and slow (minutes at the defaults).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import qmia_fast as qf
from qmia_fast import metrics
from qmia_fast.atomic_io import write_json
from qmia_fast.benchmark import _spearman


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--holdout", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    model = qf.load_model("builtin")
    images, split = qf.load_data("builtin")
    index = np.concatenate([split.members[:args.members], split.holdout[:args.holdout]])
    labels = np.r_[np.ones(min(args.members, len(split.members))), np.zeros(min(args.holdout, len(split.holdout)))]
    variants = {"fp32": {"precision": "fp32", "fast_layers": False if args.device == "cpu" else None},
                "bf16": {"precision": "bf16"}, "mixed": {"precision": "mixed"}}
    scores, report = {}, {"images": int(len(index)), "method": "secmi (t_sec 100, k 10)", "device": args.device,
                          "runs": {}}
    for name, options in variants.items():
        started = time.perf_counter()
        scores[name] = qf.score(model, images[index], method="secmi", device=args.device, **options)
        seconds = time.perf_counter() - started
        run = {"seconds": seconds, "auc": metrics.auc(-scores[name], labels),
               "tpr_at_1%fpr": float(metrics.tpr_at_fpr(-scores[name], labels, 0.01))}
        if name != "fp32":
            rel = np.abs(scores[name] - scores["fp32"]) / np.abs(scores["fp32"])
            run.update(median_rel_diff=float(np.median(rel)), max_rel_diff=float(rel.max()),
                       spearman=_spearman(scores[name], scores["fp32"]))
        report["runs"][name] = run
        print(name, json.dumps(run), flush=True)
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
