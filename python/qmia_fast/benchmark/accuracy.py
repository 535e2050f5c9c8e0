"""The demo audit on strict fp32 scores against each precision variant's: do the attack's numbers hold?"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .scoring_rows import parse_variant
from .timing import ROUNDING_RMS, rms_per_pixel

# --accuracy runs a whole audit per variant, so it compares fewer by default.
ACCURACY_VARIANTS = {"cpu": ("auto", "bf16"), "cuda": ("auto",)}


def accuracy_check(precisions: Sequence[str] = ("auto",), device: str = "cpu", batch_size: int | None = None,
                   seed: int = 0, n_models: int = 7, tolerance: float = 0.005, method: str = "recommended",
                   max_per_set: int | None = None, log: Callable[[str], None] = lambda s: None,
                   on_update: Callable[[dict], None] | None = None) -> dict:
    """The demo audit (pipeline.run_audit, in memory) on strict fp32 scores and on each variant's scores.

    The reference is strict fp32 on torch's own layers (direct convolutions on a CPU, TF32
    off on CUDA); each variant (parse_variant) runs with the scorer's defaults otherwise.
    The bag is fitted with the same seed each time, so only the scores differ; AUC and
    TPR@1%FPR of every method must agree within `tolerance`. `method`: "recommended" (what
    `qmia-fast attack` uses on the demo), or secmi / loss / pia. max_per_set: a seeded subset of
    each set (a quick dry run). on_update(report) after each audit.
    """
    from ..models import BUILTIN_TARGET_DIR
    from ..pipeline import AttackSpec, AuditSpec, ScoreSpec, run_audit

    if not (BUILTIN_TARGET_DIR / "config.json").is_file():
        raise ConfigError(f"the accuracy check needs the trained demo target in {BUILTIN_TARGET_DIR}; "
                          "train it first (see bench/README.md)")
    if method not in ("recommended", "secmi", "loss", "pia"):
        raise ConfigError(f"method = {method!r} must be recommended, secmi, loss or pia")
    reference = "fp32-strict"
    variants = {reference: {"precision": "fp32", "fused": False, "fast_layers": False if device == "cpu" else None}}
    variants.update({spec: parse_variant(spec) for spec in precisions})
    report: dict = {"model": "builtin demo target", "device": device, "tolerance": tolerance, "reference": reference,
                    "runs": {}, "comparison_to_reference": {}, "complete": False}
    scores = {}
    for label, kwargs in variants.items():
        spec = AuditSpec(score=ScoreSpec(method=None if method == "recommended" else method, device=device,
                                         batch_size=batch_size, **kwargs),
                         attack=AttackSpec(n_models=n_models, max_per_set=max_per_set), seed=seed, out=None)
        result = run_audit(spec)
        scores[label] = np.concatenate([result.raw_scores[name] for name in ("members", "public", "holdout")])
        resolved = result.report["config"]["score"]
        plan = result.report["config"]["plan"]
        report["score"] = {k: v for k, v in resolved.items() if k != "precision"}
        report["images"] = int(len(scores[label]))
        rms = rms_per_pixel(scores[label], result.attack.fit_info["image_shape"])
        report["runs"][label] = {
            "precision_resolved": plan["precision"], "fused": plan["fused"], "fast_layers": plan["fast_layers"],
            "score_seconds": result.report["timings_s"]["score_s"], "score_rms_per_pixel": rms,
            # Only a t-error can be a round trip's rounding noise.
            "scores_are_rounding_noise": resolved["method"] == "secmi" and rms < ROUNDING_RMS,
            "metrics": {name: {"auc": entry["auc"], "tpr_at_1%fpr": entry["tpr_at_fpr"]["1%"]}
                        for name, entry in result.report["methods"].items()}}
        log(f"accuracy: {label}: {report['runs'][label]['metrics']}")
        if label != reference:
            base = report["runs"][reference]["metrics"]
            run_metrics = report["runs"][label]["metrics"]
            rel = np.abs(scores[label] - scores[reference]) / np.maximum(np.abs(scores[reference]), 1e-30)
            # None: a metric the sample cannot resolve (TPR at 1% FPR needs >= 100 non-members).
            deltas = {name: {key: None if run_metrics[name][key] is None or base[name][key] is None
                             else abs(run_metrics[name][key] - base[name][key]) for key in base[name]}
                      for name in base}
            compared = [d for m in deltas.values() for d in m.values() if d is not None]
            report["comparison_to_reference"][label] = {
                "max_rel_score_diff": float(rel.max()), "median_rel_score_diff": float(np.median(rel)),
                "spearman": spearman(scores[label], scores[reference]), "deltas": deltas,
                "within_tolerance": bool(compared) and all(d <= tolerance for d in compared)}
        report["meaningful"] = not report["runs"][reference]["scores_are_rounding_noise"]
        if on_update is not None:
            on_update(report)
    report["complete"] = True
    return report


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (continuous scores: ties are measure-zero, ranks by argsort)."""
    ranks_a, ranks_b = np.empty(len(a)), np.empty(len(b))
    ranks_a[np.argsort(a, kind="stable")] = np.arange(len(a))
    ranks_b[np.argsort(b, kind="stable")] = np.arange(len(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])
