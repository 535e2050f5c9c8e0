"""Audit the trained targets of the new families (scripts/make_targets.py): each score with each image's own condition and with the null one.

    python scripts/audit_targets.py [--targets /work/targets] [--out /work/audits] [--methods loss,secmi]
                                    [--json docs/experiments/families.json]
    python scripts/audit_targets.py --table     # the JSON as docs/experiments.md's markdown table

Runs `qmia-fast attack` (qf.run_audit) on every target with its default attack, once per score and
condition mode, and writes one JSON with the headline metrics of every audit (bag, single
regressor, marginal threshold: AUC, TPR@1%FPR with its interval, the decision's observed FPR at
alpha), the run plan and the wall time. Each audit's own folder keeps its report.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import qmia_fast as qf
from qmia_fast.atomic_io import write_json

TARGETS = {  # name -> (data, split or None: the data's own, conditional?)
    "class-unet": ("builtin", None, True),
    "flow-unet": ("builtin", None, True),
    "latent-unet": ("builtin", None, False),
    "dit": ("builtin", None, True),
    "text-latent": ("{root}/data/demo_captioned", "{root}/data/demo_split.npz", True),
}
SCORES = {"loss": {"method": "loss", "t": 100}, "secmi": {"method": "secmi", "t_sec": 100, "k": 10}}


def headline(report: dict) -> dict:
    out = {}
    for name, method in report["methods"].items():
        point = method["operating_points"].get("1%") or {}
        decision = method.get("decision") or {}
        out[name] = {"auc": method["auc"], "tpr_at_1pct": method["tpr_at_fpr"].get("1%"),
                     "tpr_at_1pct_ci": point.get("tpr_ci"), "decision_fpr": decision.get("fpr"),
                     "decision_fpr_ci": decision.get("fpr_ci"), "decision_tpr": decision.get("tpr")}
    return out


def _pct(value, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def table(results: dict) -> str:
    """One markdown row per audit: AUC and TPR@1%FPR (95% CI) of the bag and the marginal threshold, FPR at alpha."""
    rows = ["| target | score | condition | bag AUC | bag TPR@1%FPR [95% CI] | single | marginal | "
            "FPR of the 1% decision [95% CI] | wall |", "|---" * 9 + "|"]
    for key, entry in results.items():
        name, score, condition = key.split("/")
        bag, single, marginal = (entry["methods"].get(m, {})
                                 for m in ("qmia_bag", "single_regressor", "marginal_threshold"))
        ci = bag.get("tpr_at_1pct_ci") or [None, None]
        fpr_ci = bag.get("decision_fpr_ci") or [None, None]
        rows.append(f"| {name} | {score} | {condition} | {bag.get('auc', float('nan')):.4f} | "
                    f"{_pct(bag.get('tpr_at_1pct'))} [{_pct(ci[0])}, {_pct(ci[1])}] | "
                    f"{_pct(single.get('tpr_at_1pct'))} | {_pct(marginal.get('tpr_at_1pct'))} | "
                    f"{_pct(bag.get('decision_fpr'), 2)} [{_pct(fpr_ci[0], 2)}, {_pct(fpr_ci[1], 2)}] | "
                    f"{entry['seconds']:.0f} s |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=os.environ.get("QMIA_TARGETS_ROOT", "/work/targets"))
    parser.add_argument("--out", default="/work/audits")
    parser.add_argument("--methods", default="loss,secmi")
    parser.add_argument("--only", default=None, help="comma-separated target names")
    parser.add_argument("--json", default="docs/experiments/families.json")
    parser.add_argument("--conditions", default="own,null", help="condition modes for conditional targets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for scoring and fitting")
    parser.add_argument("--table", action="store_true", help="print the JSON as a markdown table and stop")
    args = parser.parse_args(argv)
    root = Path(args.targets)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    if args.table:
        print(table(results))
        return 0
    names = args.only.split(",") if args.only else list(TARGETS)
    for name in names:
        data, split, conditional = TARGETS[name]
        for score in args.methods.split(","):
            for condition in (args.conditions.split(",") if conditional else ("own",)):
                key = f"{name}/{score}/{condition}"
                out = Path(args.out) / f"{name}-{score}-{condition}"
                spec = qf.AuditSpec(model=qf.ModelSpec(str(root / name)),
                                    data=qf.DataSpec(data.format(root=root),
                                                     split=None if split is None else split.format(root=root)),
                                    score=qf.ScoreSpec(**SCORES[score], condition=condition, threads=args.threads),
                                    out=str(out),
                                    overwrite=True, plots=True)
                started = time.perf_counter()
                audit = qf.run_audit(spec, log=lambda text: print(f"[{key}] {text}", flush=True))
                results[key] = {"seconds": time.perf_counter() - started, "methods": headline(audit.report),
                                "score": audit.report["config"]["score"], "plan": audit.report["config"]["plan"],
                                "sets": audit.report["sets"], "report": str(out / "report.json")}
                print(f"[{key}] {json.dumps(results[key]['methods'])}", flush=True)
                write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
