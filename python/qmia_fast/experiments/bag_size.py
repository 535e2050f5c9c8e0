"""Experiment `bag-size`: how many weak regressors (and how wide) the bag needs, and whether bagging cuts seed-to-seed variance."""
from __future__ import annotations

import numpy as np

from ..attack import BAG, MARGINAL
from ..regress import RegressorConfig
from .lab import Lab
from .summary import aggregate
from .writing import COLOURS, TITLES, Section, errorbar, new_figure, num, pct, seconds

NAME = "bag-size"
TITLE = "Bag size and regressor width"


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    raw, _ = lab.base_scores()
    sets = lab.sets
    public_images = lab.images[sets["public"]]
    eval_images, labels = lab.evaluation()
    eval_raw = np.concatenate([raw["members"], raw["holdout"]])
    seeds = lab.seeds(budget.seeds)
    default_width = lab.regressor_options().get("width", RegressorConfig.width)
    widths = [w for w in budget.widths if w != default_width]
    total = len(seeds) * (len(budget.bag_sizes) + len(widths))

    def fits(n_models, width=None):
        out = lab.fit_seeds(public_images, raw["public"], eval_images, eval_raw, labels,
                            seeds=seeds, bar=bar, n_models=n_models, width=width, baselines=False)
        return aggregate(out)

    with lab.fit_bar(total, "bag-size: fitting") as bar:
        by_size = {b: fits(b) for b in budget.bag_sizes}
        by_width = {w: fits(lab.n_models, w) for w in widths}
    if lab.n_models in by_size:
        by_width[default_width] = by_size[lab.n_models]
    elif budget.widths:
        with lab.fit_bar(len(seeds), "bag-size: fitting") as bar:
            by_width[default_width] = fits(lab.n_models)
    by_width = dict(sorted(by_width.items()))
    marginal = next(iter(by_size.values()))["methods"][MARGINAL]

    section.text(
        f"Bags of B regressors (each on its own bootstrap resample of the {len(sets['public'])} public images) at "
        f"alpha = {lab.alpha:g}, {len(seeds)} bag seeds per setting; judged on {len(sets['members'])} members and "
        f"{len(sets['holdout'])} holdout non-members. B = 1 is one regressor on one bootstrap resample. The sd "
        f"column is the seed-to-seed spread, the variance bagging is meant to reduce. The marginal threshold "
        f"(no regressor) reaches TPR@1%FPR {pct(marginal['tpr_at_1pct'])} and AUC {num(marginal['auc'])}.")
    rows = []
    for b, agg in by_size.items():
        m = agg["methods"][BAG]
        rows.append([b, pct(m["tpr_at_1pct"]), f"{100 * m['tpr_at_1pct']['sd']:.1f}" if m["tpr_at_1pct"]["n"] > 1
                     else "n/a", num(m["auc"]), f"{m['auc']['sd']:.4f}" if m["auc"]["n"] > 1 else "n/a",
                     pct(m["decision_fpr"], 2), pct(m["decision_tpr"]), seconds(agg["fit_bag_s"]["mean"])])
    section.table(["B", "TPR@1%FPR", "sd (points)", "AUC", "sd", "FPR of alpha decision", "TPR of alpha decision",
                   "fit time"], rows, caption=f"Bag size (width {default_width}):")
    rows = []
    for w, agg in by_width.items():
        m = agg["methods"][BAG]
        rows.append([w, f"{agg['parameters_per_regressor']:,}", pct(m["tpr_at_1pct"]), num(m["auc"]),
                     pct(m["decision_fpr"], 2), seconds(agg["fit_bag_s"]["mean"])])
    if rows:
        section.table(["width", "parameters per regressor", "TPR@1%FPR", "AUC", "FPR of alpha decision", "fit time"],
                      rows, caption=f"Regressor width (bag of {lab.n_models}):")
    section.results.update(by_bag_size={str(b): a for b, a in by_size.items()},
                           by_width={str(w): a for w, a in by_width.items()}, default_width=default_width)
    sizes = list(by_size)

    def draw():
        figure, axes = new_figure(2, 1, width=5.0)
        left, right = axes[0, 0], axes[0, 1]
        errorbar(left, sizes, [by_size[b]["methods"][BAG]["tpr_at_1pct"] for b in sizes], "QMIA bag (± sd)",
                 COLOURS[BAG])
        left.axhline(100 * marginal["tpr_at_1pct"]["mean"], color=COLOURS[MARGINAL], linestyle="--",
                     label=TITLES[MARGINAL])
        left.set_xlabel("regressors in the bag B")
        left.set_ylabel("TPR at 1% FPR (%)")
        left.set_title(f"Power vs bag size ({len(seeds)} seeds)")
        left.legend(fontsize=8)
        left.grid(True, alpha=0.3)
        sd_tpr = [100 * by_size[b]["methods"][BAG]["tpr_at_1pct"]["sd"] for b in sizes]
        sd_auc = [100 * by_size[b]["methods"][BAG]["auc"]["sd"] for b in sizes]
        right.plot(sizes, sd_tpr, marker="o", color=COLOURS[BAG], label="sd of TPR@1%FPR (points)")
        right.plot(sizes, sd_auc, marker="s", color="tab:purple", label="sd of AUC (x100)")
        right.set_xlabel("regressors in the bag B")
        right.set_ylabel("sd over seeds")
        right.set_ylim(bottom=0)
        right.set_title("Seed-to-seed spread vs bag size")
        right.legend(fontsize=8)
        right.grid(True, alpha=0.3)
        return figure

    section.figure("bag_size.png", "TPR at 1% FPR against the number of regressors in the bag (left, ± sd over seeds; "
                   "dashed: marginal threshold), and the spread over seeds (right).", draw)
    first, last = sizes[0], sizes[-1]
    sd_first = by_size[first]["methods"][BAG]["tpr_at_1pct"]["sd"]
    sd_last = by_size[last]["methods"][BAG]["tpr_at_1pct"]["sd"]
    mean_first = by_size[first]["methods"][BAG]["tpr_at_1pct"]["mean"]
    mean_last = by_size[last]["methods"][BAG]["tpr_at_1pct"]["mean"]
    section.text(f"Reading: from B = {first} to B = {last} the mean TPR@1%FPR went from {100 * mean_first:.1f}% to "
                 f"{100 * mean_last:.1f}% and its sd over seeds from {100 * sd_first:.1f} to {100 * sd_last:.1f} "
                 f"points; fitting time from {seconds(by_size[first]['fit_bag_s']['mean'])} to "
                 f"{seconds(by_size[last]['fit_bag_s']['mean'])}.")
    section.summary += [f"B={b}: TPR@1%FPR {pct(a['methods'][BAG]['tpr_at_1pct'])}, AUC {num(a['methods'][BAG]['auc'])}, "
                        f"fit {seconds(a['fit_bag_s']['mean'])}" for b, a in by_size.items()]
    section.results["variance_ratio_last_vs_first"] = (sd_last / sd_first) if sd_first else None
