"""Aggregating fits over bag seeds: mean +- sd of each metric, intervals at the mean counts, fitting cost."""
from __future__ import annotations

from typing import Any, Sequence

from .lab import METHOD_ORDER
from .stats import mean_sd, rate_interval
from .writing import finite

METRICS = ("auc", "tpr_at_1pct", "tpr_at_0.1pct", "tpr_at_alpha", "decision_tpr", "decision_fpr")


def aggregate(fits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"methods": {name: {metric: {mean, sd, n}, "fpr_ci", "tpr_ci", "fp", "tp", n_*}}, "fit_s", "seeds"}."""
    out: dict[str, Any] = {"methods": {}, "seeds": [f["seed"] for f in fits]}
    names = [n for n in METHOD_ORDER if all(n in f["methods"] for f in fits)]
    for name in names:
        rows = [f["methods"][name] for f in fits]
        entry: dict[str, Any] = {metric: mean_sd(r[metric] for r in rows) for metric in METRICS}
        n_neg, n_pos = rows[0]["n_nonmembers"], rows[0]["n_members"]
        fp, tp = [r["fp"] for r in rows], [r["tp"] for r in rows]
        entry.update(fp=fp, tp=tp, n_nonmembers=n_neg, n_members=n_pos,
                     fpr_ci=list(rate_interval(fp, n_neg)), tpr_ci=list(rate_interval(tp, n_pos)),
                     per_seed={metric: [r[metric] for r in rows] for metric in ("tpr_at_1pct", "auc",
                                                                                  "decision_fpr")})
        out["methods"][name] = entry
    out["fit_bag_s"] = mean_sd(f["fit_bag_s"] for f in fits)
    # Selection, baselines and calibration included; CPU time beside wall time (shared machines).
    out["fit_total_s"] = mean_sd(f.get("fit_total_s") for f in fits)
    out["fit_total_cpu_s"] = mean_sd(f.get("fit_total_cpu_s") for f in fits)
    out["chosen"] = [f.get("chosen") for f in fits]
    out["fit_single_s"] = mean_sd(f["fit_single_s"] for f in fits if f.get("fit_single_s") is not None)
    out["parameters_per_regressor"] = fits[0]["parameters_per_regressor"] if fits else None
    return out


def cost_text(cost: dict[str, Any]) -> str:
    """'1.5 ms/image (11 UNet calls), 3,200 images in 4.8 s' for a score cache record."""
    per = cost.get("per_image_s")
    text = f"{1000 * per:.2f} ms/image" if finite(per) else "cost not measured (cached)"
    calls = cost.get("unet_calls_per_image")
    return f"{text} ({calls} UNet call{'' if calls == 1 else 's'}), {cost.get('n')} images in {cost.get('seconds', 0):.1f} s" \
        + (" (measured when first scored; cached since)" if cost.get("cached") else "")
