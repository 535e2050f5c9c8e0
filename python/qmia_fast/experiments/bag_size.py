"""Experiment `bag-size`: how many regressors (and how wide) the bag needs, bootstrap bag against full-data members, and the selected regressor."""
from __future__ import annotations

from collections import Counter

from ..attack import BAG, MARGINAL
from ..regress import RegressorConfig
from .lab import Lab
from .summary import aggregate
from .writing import COLOURS, TITLES, Section, errorbar, label_panel, new_figure, num, pct, seconds

NAME = "bag-size"
TITLE = "Bag size, ensemble kind, regressor width and the selected regressor"
# The two ensembles the paper's question is about, by their named regressor settings.
ENSEMBLES = {"paper": "bootstrap bag (paper)", "full": "full-data members"}
ENSEMBLE_COLOURS = {"paper": COLOURS[BAG], "full": "tab:green"}


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    raw, _ = lab.base_scores()
    sets = lab.sets
    seeds = lab.seeds(budget.seeds)
    default_width = lab.regressor_options().get("width", RegressorConfig.width)
    widths = [w for w in budget.widths if w != default_width]
    compared = [r for r in dict.fromkeys((lab.spec.attack.regressor, "paper", "full"))]
    total = len(seeds) * (len(ENSEMBLES) * len(budget.bag_sizes) + len(widths) + len(compared))

    def fits(n_models, regressor, width=None, baselines=False):
        return aggregate(lab.fit_sets(raw, seeds=seeds, bar=bar, n_models=n_models, width=width,
                                      baselines=baselines, regressor=regressor))

    with lab.fit_bar(total, "bag-size: fitting") as bar:
        by_size = {kind: {b: fits(b, kind) for b in budget.bag_sizes} for kind in ENSEMBLES}
        by_width = {w: fits(lab.n_models, "full", w) for w in widths}
        # With the baselines: the single regressor and the marginal threshold beside each whole attack.
        by_regressor = {name: fits(lab.n_models, name, baselines=True) for name in compared}
    if lab.n_models in by_size["full"]:
        by_width[default_width] = by_size["full"][lab.n_models]
    by_width = dict(sorted(by_width.items()))
    marginal = by_regressor[compared[0]]["methods"][MARGINAL]

    section.text(
        f"Ensembles of B regressors on the {len(sets['public'])} public images at alpha = {lab.alpha:g}, "
        f"{len(seeds)} bag seeds per setting, calibration {lab.spec.attack.calibration}; judged on "
        f"{len(sets['members'])} members and {len(sets['holdout'])} holdout non-members. Bootstrap bag (the "
        f"paper's): each member on its own bootstrap resample, early stopping on out-of-bag images. Full-data "
        f"members: each member on the whole training part but its own disjoint early-stopping fold (a tenth, or "
        f"1/B for B > 10), with its own seed. The sd column is the seed-to-seed spread, the variance an ensemble is "
        f"meant to reduce. The marginal threshold (no regressor) reaches TPR@1%FPR {pct(marginal['tpr_at_1pct'])} "
        f"and AUC {num(marginal['auc'])}.")
    rows = []
    for b in budget.bag_sizes:
        for kind, title in ENSEMBLES.items():
            agg = by_size[kind][b]
            m = agg["methods"][BAG]
            rows.append([b, title, pct(m["tpr_at_1pct"]),
                         f"{100 * m['tpr_at_1pct']['sd']:.1f}" if m["tpr_at_1pct"]["n"] > 1 else "n/a",
                         num(m["auc"]), f"{m['auc']['sd']:.4f}" if m["auc"]["n"] > 1 else "n/a",
                         pct(m["decision_fpr"], 2), pct(m["decision_tpr"]), seconds(agg["fit_bag_s"]["mean"])])
    section.table(["B", "ensemble", "TPR@1%FPR", "sd (points)", "AUC", "sd", "FPR of alpha decision",
                   "TPR of alpha decision", "fit time"], rows, caption=f"Bag size and ensemble (width {default_width}):")
    rows = []
    for w, agg in by_width.items():
        m = agg["methods"][BAG]
        rows.append([w, f"{agg['parameters_per_regressor']:,}", pct(m["tpr_at_1pct"]), num(m["auc"]),
                     pct(m["decision_fpr"], 2), seconds(agg["fit_bag_s"]["mean"])])
    if rows:
        section.table(["width", "parameters per regressor", "TPR@1%FPR", "AUC", "FPR of alpha decision", "fit time"],
                      rows, caption=f"Regressor width (full-data members, B = {lab.n_models}):")
    rows = []
    for name, agg in by_regressor.items():
        chosen = ", ".join(f"{k} x{v}" for k, v in Counter(agg["chosen"]).items())
        for method in (BAG, "single_regressor"):
            m = agg["methods"].get(method)
            if m is None:
                continue
            rows.append([name, chosen if method == BAG else "", TITLES[method], pct(m["tpr_at_1pct"]),
                         num(m["auc"]), pct(m["decision_fpr"], 2), pct(m["decision_tpr"]),
                         seconds(agg["fit_total_s"]["mean"]) if method == BAG else "",
                         seconds(agg["fit_total_cpu_s"]["mean"]) if method == BAG else ""])
    section.table(["--regressor", "chosen (seeds)", "method", "TPR@1%FPR", "AUC", "FPR of alpha decision",
                   "TPR of alpha decision", "whole fit (wall)", "whole fit (CPU)"], rows,
                  caption=f"Selected against fixed regressors (B = {lab.n_models}; the whole fit: selection, "
                          "baselines and calibration):")
    section.results.update(by_bag_size={kind: {str(b): a for b, a in values.items()} for kind, values in by_size.items()},
                           by_width={str(w): a for w, a in by_width.items()}, default_width=default_width,
                           by_regressor=by_regressor)
    sizes = list(budget.bag_sizes)

    def draw():
        figure, axes = new_figure(2, 1, width=5.0)
        left, right = axes[0, 0], axes[0, 1]
        for kind, title in ENSEMBLES.items():
            errorbar(left, sizes, [by_size[kind][b]["methods"][BAG]["tpr_at_1pct"] for b in sizes], f"{title} (± sd)",
                     ENSEMBLE_COLOURS[kind])
            right.plot(sizes, [100 * by_size[kind][b]["methods"][BAG]["tpr_at_1pct"]["sd"] for b in sizes],
                       marker="o", color=ENSEMBLE_COLOURS[kind], label=f"{title}: sd of TPR@1%FPR (points)")
        left.axhline(100 * marginal["tpr_at_1pct"]["mean"], color=COLOURS[MARGINAL], linestyle="--",
                     label=TITLES[MARGINAL])
        label_panel(left, "regressors in the ensemble B", "TPR at 1% FPR (%)",
                    f"Power vs ensemble size ({len(seeds)} seeds)", legend_size=8)
        right.set_ylim(bottom=0)
        label_panel(right, "regressors in the ensemble B", "sd over seeds (points)",
                    "Seed-to-seed spread vs ensemble size", legend_size=8)
        return figure

    section.figure("bag_size.png", "TPR at 1% FPR against the number of regressors, bootstrap bag and full-data "
                   "members (left, ± sd over seeds; dashed: marginal threshold), and the spread over seeds (right).",
                   draw)
    first, last = sizes[0], sizes[-1]
    parts = []
    for kind, title in ENSEMBLES.items():
        a, z = by_size[kind][first]["methods"][BAG]["tpr_at_1pct"], by_size[kind][last]["methods"][BAG]["tpr_at_1pct"]
        parts.append(f"{title}: from B = {first} to B = {last} the mean TPR@1%FPR went from {100 * a['mean']:.1f}% to "
                     f"{100 * z['mean']:.1f}% and its sd over seeds from {100 * a['sd']:.1f} to {100 * z['sd']:.1f} "
                     f"points (fit {seconds(by_size[kind][first]['fit_bag_s']['mean'])} to "
                     f"{seconds(by_size[kind][last]['fit_bag_s']['mean'])})")
    section.text("Reading: " + "; ".join(parts) + ".")
    section.summary += [f"{kind} B={b}: TPR@1%FPR {pct(a['methods'][BAG]['tpr_at_1pct'])}, AUC "
                        f"{num(a['methods'][BAG]['auc'])}, fit {seconds(a['fit_bag_s']['mean'])}"
                        for kind, values in by_size.items() for b, a in values.items()]
    section.summary += [f"--regressor {name}: TPR@1%FPR {pct(a['methods'][BAG]['tpr_at_1pct'])}, whole fit "
                        f"{seconds(a['fit_total_s']['mean'])}" for name, a in by_regressor.items()]
    sd_first = by_size["paper"][first]["methods"][BAG]["tpr_at_1pct"]["sd"]
    sd_last = by_size["paper"][last]["methods"][BAG]["tpr_at_1pct"]["sd"]
    section.results["variance_ratio_last_vs_first"] = (sd_last / sd_first) if sd_first else None
