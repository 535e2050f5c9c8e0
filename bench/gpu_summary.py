"""gpu_check.sh's Python helpers: the environment record, the CUDA tests' JUnit XML as JSON, and summary.json.

    python bench/gpu_summary.py environment --out environment.json
    python bench/gpu_summary.py junit results.xml --out cuda_tests.json
    python bench/gpu_summary.py summary --out OUT_DIR --stages stages.jsonl [--budget 240] [--total-seconds N]

The summary reads whatever the stages left in OUT_DIR (a stage cut short leaves a partial
JSON, a skipped one none) and never fails on a missing or partial file: it says what is
missing. Its "decisions" say, from the figures, whether FUSED_BY_DEFAULT["cuda"] should be
flipped, whether auto keeps the precision rule, and whether the targets were met; a GPU
session checks them against the files before acting on them (bench/README.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

# Issue 10's targets for SecMI on the CIFAR-10 UNet: images/s and the ratio to the plain loop.
TARGET_IMAGES_PER_S = 3000.0
TARGET_RATIO = 4.0
# fp16 fused must beat fp16 unfused by this much before the default flips: less is noise.
FUSED_MIN_GAIN = 1.02


def _write(path: str | os.PathLike, data: dict) -> None:
    from qmia_fast.atomic_io import write_json

    write_json(path, data)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def environment() -> dict:
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
    return info


def junit(xml_path: str) -> dict:
    """Counts and the failing tests' names and first message lines of a pytest JUnit XML file."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"no readable JUnit XML at {xml_path}: {exc}"}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, per_file = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        parts = case.get("classname", "").split(".")  # tests.test_x or tests.test_x.TestClass
        module = next((part for part in reversed(parts) if part.startswith("test_")), parts[-1] or "?")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append({"test": name, "kind": child.tag, "message": (message[0] if message else "")[:300]})
            elif child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
        per_file.setdefault(module, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})[outcome] += 1
    return {**counts, "by_module": per_file, "failures": failures[:50]}


def _benchmark(bench: dict | None) -> dict:
    if not bench:
        return {"missing": True}
    rows = [row for row in bench.get("scoring", []) if row.get("model") == "cifar10"] or bench.get("scoring", [])
    if not rows:
        return {"missing": False, "complete": bench.get("complete", False), "rows": 0}
    row = rows[0]
    results = row["results"]
    out = {"complete": bench.get("complete", False), "model": row["model"], "batch_size": row["batch_size"],
           "gpu": bench.get("environment", {}).get("gpu"), "matmul_gflops": {
               k: v for k, v in (bench.get("matmul") or {}).items() if k.endswith("_gflops")},
           "images_per_s": {k: round(e["images_per_s_wall"], 1) for k, e in results.items()},
           "ratio_to_plain_loop": {k: round(e["ratio_wall"], 3) for k, e in results.items() if "ratio_wall" in e},
           "ratio_to_strict_fp32_loop": {k: round(e["ratio_wall_strict"], 3) for k, e in results.items()
                                         if "ratio_wall_strict" in e},
           "share_of_matmul_peak": {k: e.get("matmul_peak_fraction") for k, e in results.items()},
           "fused": {k: e.get("fused") for k, e in results.items() if k not in ("baseline", "baseline-fp32")},
           "recomputed_fp32": {k: e.get("recomputed_fp32") for k, e in results.items() if "recomputed_fp32" in e}}
    auto = results.get("auto")
    if auto:
        out["auto_meets_targets"] = {
            f">= {TARGET_IMAGES_PER_S:.0f} img/s": auto["images_per_s_wall"] >= TARGET_IMAGES_PER_S,
            f">= {TARGET_RATIO:g}x the plain loop": auto.get("ratio_wall", 0.0) >= TARGET_RATIO}
    # fp16 with the fused GroupNorm on against off; the one auto runs as was timed under "auto".
    auto_fp16 = auto if auto and auto.get("precision_resolved") == "fp16" else {}
    fused = results.get("fp16:fused") or (auto_fp16 if auto_fp16.get("fused") is True else None)
    unfused = results.get("fp16:unfused") or (auto_fp16 if auto_fp16.get("fused") is False else None)
    if fused and unfused:
        out["fp16_fused_over_unfused"] = fused["images_per_s_wall"] / unfused["images_per_s_wall"]
    return out


def _profile_heads(bench: dict | None, rows: int = 5) -> dict:
    heads = {}
    for row in (bench or {}).get("scoring", []):
        for label, prof in (row.get("profile") or {}).items():
            heads[label] = prof.get("error") or [f"{100 * k['share']:.1f}% {k['name'][:80]}"
                                                 for k in prof["kernels"][:rows]]
    return heads


def summary(out_dir: Path, stages_path: Path, budget: int, total_seconds: int | None) -> dict:
    stages = {}
    try:
        for line in stages_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                stages[record.pop("stage")] = record
    except (OSError, ValueError) as exc:
        stages = {"error": str(exc)}
    env = _read(out_dir / "environment.json")
    tests = _read(out_dir / "cuda_tests.json")
    bench = _read(out_dir / "bench_gpu.json")
    precision = _read(out_dir / "secmi_precision.json")
    attack = _read(out_dir / "attack_accuracy.json")
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_seconds": budget, "total_seconds": total_seconds, "stages": stages,
              "environment": env, "files": sorted(p.name for p in out_dir.iterdir() if p.is_file())}
    if tests:
        report["cuda_tests"] = {k: tests.get(k) for k in ("passed", "failed", "errors", "skipped", "error")}
        report["cuda_tests"]["fused_group_norm"] = (tests.get("by_module") or {}).get("test_fused_group_norm")
        report["cuda_tests"]["failures"] = [f["test"] for f in tests.get("failures", [])][:20]
    report["benchmark"] = _benchmark(bench)
    report["top_kernels"] = _profile_heads(bench)
    if precision:
        report["precision"] = {"complete": precision.get("complete"), "reference": precision.get("reference"),
                               "verdicts": {label: {"passes": run["verdict"]["passes"],
                                                    "median_rel_diff": run["median_rel_diff"],
                                                    "spearman": run["spearman"], "auc_delta": run["auc_delta"],
                                                    "runs_as": [run["precision_resolved"], run.get("fused")]}
                                            for label, run in precision.get("runs", {}).items()}}
    if attack:
        report["attack"] = {"complete": attack.get("complete"), "within_tolerance": {
            label: verdict["within_tolerance"] for label, verdict in attack.get("comparison_to_reference", {}).items()}}
    report["decisions"] = decisions(report)
    return report


def decisions(report: dict) -> dict:
    """What the figures say about the defaults; None where a needed figure is missing."""
    out = {}
    gn = (report.get("cuda_tests") or {}).get("fused_group_norm") or {}
    ran = gn.get("passed", 0) + gn.get("failed", 0) + gn.get("errors", 0)
    tests_ok = None if not ran else (not gn.get("failed") and not gn.get("errors"))
    gain = report.get("benchmark", {}).get("fp16_fused_over_unfused")
    verdicts = (report.get("precision") or {}).get("verdicts", {})
    # Whichever row ran fp16 with the fused GroupNorm (auto, once the default flips).
    fused_precise = next((v["passes"] for v in verdicts.values() if v.get("runs_as") == ["fp16", True]), None)
    if tests_ok is None or gain is None or fused_precise is None:
        flip = None
        why = "missing: " + ", ".join(name for name, value in (("fused GroupNorm CUDA test results", tests_ok),
                                                                ("fused timing", gain),
                                                                ("fp16:fused precision verdict", fused_precise))
                                       if value is None)
    else:
        flip = tests_ok and gain >= FUSED_MIN_GAIN and fused_precise
        why = (f"fused GroupNorm CUDA tests {'passed' if tests_ok else 'did not all pass'}; fp16 fused/unfused "
               f"{gain:.3f}x (needs >= {FUSED_MIN_GAIN}); fp16:fused precision verdict "
               f"{'passes' if fused_precise else 'fails'}")
    out["flip_FUSED_BY_DEFAULT_cuda"] = {"flip": flip, "why": why}
    auto = verdicts.get("auto", {}).get("passes")
    attack_ok = (report.get("attack") or {}).get("within_tolerance", {}).get("auto")
    out["auto_keeps_precision_rule"] = {"secmi_table": auto, "demo_attack_within_0.005": attack_ok}
    out["targets_met_by_auto"] = report.get("benchmark", {}).get("auto_meets_targets")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("environment")
    env.add_argument("--out", required=True)
    jun = sub.add_parser("junit")
    jun.add_argument("xml")
    jun.add_argument("--out", required=True)
    summ = sub.add_parser("summary")
    summ.add_argument("--out", required=True, help="the gpu_check output folder; summary.json goes there")
    summ.add_argument("--stages", required=True)
    summ.add_argument("--budget", type=int, default=240)
    summ.add_argument("--total-seconds", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "environment":
        data = environment()
        _write(args.out, data)
    elif args.command == "junit":
        data = junit(args.xml)
        _write(args.out, data)
        data = {k: data.get(k) for k in ("passed", "failed", "errors", "skipped", "error")}
    else:
        data = summary(Path(args.out), Path(args.stages), args.budget, args.total_seconds)
        _write(Path(args.out) / "summary.json", data)
        data = data["decisions"]
    print(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
