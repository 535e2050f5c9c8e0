"""SecMI t-errors of the demo target at each precision variant against strict fp32, each judged by the rule auto keeps.

    python bench/bench_secmi_precision.py [--device cuda|cpu] [--members 200] [--holdout 1000]
                                          [--variants auto,fp16:fused,tf32,bf16,mixed,mixed-tf32]
                                          [--out secmi_precision.json] [--threads N]

Scores the first --members members and --holdout holdout images of the shipped demo with
SecMI's t-error (t_sec 100, k 10), first at strict fp32 on torch's own layers (the
reference: TF32 off on CUDA, direct convolutions on a CPU), then at each variant
(`precision[:fused|:unfused]`, as in `qmia-fast bench --precisions`). Per variant: median,
p95 and largest relative difference from the reference, Spearman rank correlation, the
marginal (raw t-error, lower = member) AUC and TPR at 1% FPR and their change, the
fp32 recomputations after half-precision overflows, seconds, and the verdict against
RULE (median < 1%, Spearman >= 0.999, AUC within 0.005 of the reference). A variant that
runs as an earlier one (tf32 = fp32 on a CPU) is noted, not rerun. The JSON is rewritten
after each variant. On a CPU bf16 and fp16 are emulated (slow): use a subset there.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch

import qmia_fast as qf
from qmia_fast import metrics
from qmia_fast.atomic_io import write_json
from qmia_fast.benchmark import parse_variant, planned_runs_as, scoring_variants, spearman
from qmia_fast.scoring import Scorer, default_unet_batch

RULE = {"median_rel_diff_below": 0.01, "spearman_at_least": 0.999, "auc_within": 0.005}
DEFAULT_VARIANTS = {"cuda": "auto,fp16:fused,tf32,bf16,mixed,mixed-tf32",
                    "cpu": "auto,fp32,tf32,bf16,fp16,mixed,mixed-tf32"}


def verdict(run: dict) -> dict:
    """Which parts of RULE a variant's row meets, and whether it meets all."""
    checks = {"median_rel_diff": run["median_rel_diff"] < RULE["median_rel_diff_below"],
              "spearman": run["spearman"] >= RULE["spearman_at_least"],
              "auc": run["auc_delta"] <= RULE["auc_within"]}
    return {"checks": checks, "passes": all(checks.values())}


def score(model, images, device: str, kwargs: dict) -> tuple[np.ndarray, dict]:
    """t-errors of images at one variant (its own copy of the model), and what ran."""
    # The scorer pads to whole micro-batches: a subset smaller than one is run as it is.
    unet_batch = min(default_unet_batch(torch.device(device)), len(images))
    scorer = Scorer(copy.deepcopy(model), "secmi", t_sec=100, k=10, device=device, unet_batch=unet_batch, **kwargs)
    started = time.perf_counter()
    values = scorer.score(images)
    return values, {"seconds": time.perf_counter() - started, "unet_batch": unet_batch,
                    "precision_resolved": scorer.config.precision,
                    "fused": scorer.fused, "fast_layers": scorer.fast_layers,
                    "recomputed_fp32": scorer.recomputed_fp32}


def compare(values: np.ndarray, reference: np.ndarray, labels: np.ndarray, reference_auc: float) -> dict:
    rel = np.abs(values - reference) / np.maximum(np.abs(reference), 1e-30)
    auc = metrics.auc(-values, labels)
    return {"median_rel_diff": float(np.median(rel)), "p95_rel_diff": float(np.percentile(rel, 95)),
            "max_rel_diff": float(rel.max()), "spearman": spearman(values, reference), "auc": auc,
            "auc_delta": abs(auc - reference_auc), "tpr_at_1%fpr": float(metrics.tpr_at_fpr(-values, labels, 0.01))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--variants", default=None, help="default: " + "; ".join(
        f"{k}: {v}" for k, v in DEFAULT_VARIANTS.items()))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here (rewritten after each variant)")
    args = parser.parse_args(argv)
    if args.members < 1 or args.holdout < 1:
        parser.error("--members and --holdout must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = [v.strip() for v in (args.variants or DEFAULT_VARIANTS[device.type]).split(",") if v.strip()]
    for spec in specs:
        parse_variant(spec)  # a bad name fails before any scoring
    model = qf.load_model("builtin")
    images, split = qf.load_data("builtin")
    members, holdout = split.members[:args.members], split.holdout[:args.holdout]
    # What each variant runs as is the demo target's run plan at the micro-batch score() uses.
    unet_batch = min(default_unet_batch(device), len(members) + len(holdout))
    runs_as = planned_runs_as(model, device, unet_batch)
    variants, notes = scoring_variants(specs, device, runs_as=runs_as)
    index = np.concatenate([members, holdout])
    labels = np.r_[np.ones(len(members)), np.zeros(len(holdout))]
    report = {"method": "secmi (t_sec 100, k 10)", "device": args.device, "members": int(len(members)),
              "holdout": int(len(holdout)), "rule": RULE, "notes": notes, "torch": torch.__version__,
              "auto_resolves_to": runs_as({"precision": "auto"})[0],
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "complete": False, "runs": {}}

    def save() -> None:
        if args.out:
            write_json(args.out, report)

    # The reference: strict fp32 on torch's own layers, as the plain loop computes.
    reference_kwargs = {"precision": "fp32", "fused": False, **({"fast_layers": False} if device.type == "cpu" else {})}
    reference, info = score(model, images[index], args.device, reference_kwargs)
    reference_auc = metrics.auc(-reference, labels)
    report["reference"] = {**info, "auc": reference_auc,
                           "tpr_at_1%fpr": float(metrics.tpr_at_fpr(-reference, labels, 0.01))}
    print("fp32-strict", json.dumps(report["reference"]), flush=True)
    save()
    for label, kwargs in variants.items():
        values, info = score(model, images[index], args.device, kwargs)
        run = {**info, **compare(values, reference, labels, reference_auc)}
        run["verdict"] = verdict(run)
        report["runs"][label] = run
        print(label, json.dumps(run), flush=True)
        save()
    report["complete"] = True
    if "auto" in report["runs"]:
        report["auto_passes"] = report["runs"]["auto"]["verdict"]["passes"]
    save()
    print(format_table(report))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def format_table(report: dict) -> str:
    lines = [f"SecMI t-error vs strict fp32 on the demo target ({report['members']} members + {report['holdout']} "
             f"holdout, {report['device']}{', ' + report['gpu'] if report.get('gpu') else ''}); reference AUC "
             f"{report['reference']['auc']:.4f}, TPR@1%FPR {report['reference']['tpr_at_1%fpr']:.3f}",
             f"{'variant':<12} {'runs as':<12} {'median rel':>10} {'p95 rel':>9} {'Spearman':>9} {'AUC':>7} "
             f"{'dAUC':>7} {'TPR@1%':>7} {'redo':>4} {'verdict':>7}"]
    for label, run in report["runs"].items():
        runs_as = run["precision_resolved"] + ("+fused" if run.get("fused") else "")
        lines.append(f"{label:<12} {runs_as:<12} {run['median_rel_diff']:>10.2e} {run['p95_rel_diff']:>9.2e} "
                     f"{run['spearman']:>9.6f} {run['auc']:>7.4f} {run['auc_delta']:>7.4f} "
                     f"{run['tpr_at_1%fpr']:>7.3f} {run['recomputed_fp32']:>4} "
                     f"{'pass' if run['verdict']['passes'] else 'FAIL':>7}")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
