"""Experiment `alpha`: the decision level swept; observed FPR against the target (calibration) and the TPR bought."""
from __future__ import annotations

import numpy as np

from ..attack import BAG, MARGINAL, SINGLE
from .lab import Lab
from .summary import aggregate, cost_text
from .writing import COLOURS, TITLES, Section, errorbar, interval, new_figure, pct, seconds

NAME = "alpha"
TITLE = "Decision level alpha: calibration and power"


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    raw, cost = lab.base_scores()
    sets = lab.sets
    public_images = lab.images[sets["public"]]
    eval_images, labels = lab.evaluation()
    eval_raw = np.concatenate([raw["members"], raw["holdout"]])
    seeds = lab.seeds(budget.seeds)
    per_alpha = {}
    with lab.fit_bar(len(budget.alphas) * len(seeds), "alpha: fitting") as bar:
        for alpha in budget.alphas:
            fits = lab.fit_seeds(public_images, raw["public"], eval_images, eval_raw, labels,
                                 seeds=seeds, bar=bar, alpha=alpha)
            per_alpha[alpha] = aggregate(fits)
    n_neg = len(sets["holdout"])
    section.text(
        f"For each alpha the bag ({lab.n_models} regressors), a single regressor and the marginal threshold are "
        f"fitted on the {len(sets['public'])} public non-members with {len(seeds)} bag seeds and judged on "
        f"{len(sets['members'])} members and {n_neg} holdout non-members. The decision is the fixed "
        f"member/non-member call at level alpha; by construction its FPR on non-members should be about alpha. "
        f"At alpha = {min(budget.alphas):g} the holdout allows an expected {min(budget.alphas) * n_neg:.1f} "
        f"false positives, so the interval is wide there. Scores: {cost_text(cost)}.")
    rows = []
    for alpha, agg in per_alpha.items():
        for name in (BAG, SINGLE, MARGINAL):
            m = agg["methods"].get(name)
            if m is None:
                continue
            low, high = m["fpr_ci"]
            rows.append([f"{alpha:g}", TITLES[name], pct(m["decision_fpr"], 2), interval(low, high, 2),
                         "yes" if low <= alpha <= high else "**no**", pct(m["decision_tpr"]),
                         interval(*m["tpr_ci"]), pct(m["tpr_at_alpha"]),
                         seconds(agg["fit_bag_s"]["mean"]) if name == BAG else
                         seconds(agg["fit_single_s"]["mean"]) if name == SINGLE else "-"])
    section.table(["alpha", "method", "observed FPR", "95% CI", "alpha in CI", "decision TPR", "95% CI",
                   "TPR at FPR = alpha (ROC)", "fit time"], rows)
    section.results.update(score_cost=cost, n_holdout=n_neg, n_members=len(sets["members"]),
                           by_alpha={f"{a:g}": agg for a, agg in per_alpha.items()})
    alphas = list(per_alpha)

    def draw():
        figure, axes = new_figure(2, 1, width=5.0)
        calib, power = axes[0, 0], axes[0, 1]
        floor = 0.5 / n_neg
        calib.plot([floor, 1], [floor, 1], linestyle="--", color="black", linewidth=1, label="observed = target")
        for name in (BAG, SINGLE, MARGINAL):
            stats = [per_alpha[a]["methods"][name]["decision_fpr"] for a in alphas if name in per_alpha[a]["methods"]]
            if len(stats) != len(alphas):
                continue
            clipped = [{**s, "mean": max(s["mean"], floor)} for s in stats]
            errorbar(calib, alphas, clipped, TITLES[name], COLOURS[name], scale=1.0)
            cis = np.array([per_alpha[a]["methods"][name]["fpr_ci"] for a in alphas])
            if name == BAG:
                calib.fill_between(alphas, np.maximum(cis[:, 0], floor), cis[:, 1], color=COLOURS[name], alpha=0.15,
                                   label="bag 95% CI (holdout sampling)")
            errorbar(power, alphas, [per_alpha[a]["methods"][name]["decision_tpr"] for a in alphas], TITLES[name],
                     COLOURS[name])
        calib.set_xscale("log")
        calib.set_yscale("log")
        calib.set_xlim(min(alphas) / 1.5, max(alphas) * 1.5)
        calib.set_ylim(floor / 1.2, 1)
        calib.set_xlabel("target FPR alpha")
        calib.set_ylabel("observed FPR on the holdout")
        calib.set_title(f"Calibration ({n_neg} holdout non-members)")
        calib.legend(fontsize=7, loc="upper left")
        calib.grid(True, which="both", alpha=0.3)
        power.set_xscale("log")
        power.set_xlabel("target FPR alpha")
        power.set_ylabel("TPR of the alpha decision (%)")
        power.set_title(f"Power ({len(sets['members'])} members, ± sd over {len(seeds)} seeds)")
        power.legend(fontsize=7)
        power.grid(True, which="both", alpha=0.3)
        return figure

    section.figure("alpha_calibration.png", "Observed false-positive rate of the alpha decision against its target "
                   "(left, log-log; bars: sd over bag seeds; points at 0 drawn at the floor), and its TPR (right).",
                   draw)
    bag = {a: per_alpha[a]["methods"][BAG] for a in alphas}
    off = [f"{a:g}" for a in alphas if not (bag[a]["fpr_ci"][0] <= a <= bag[a]["fpr_ci"][1])]
    section.text("Reading: the bag's observed FPR is " + (
        "within the 95% interval of its target at every alpha." if not off else
        f"outside the 95% interval of its target at alpha = {', '.join(off)}.") + " " + "; ".join(
        f"alpha {a:g}: bag TPR {pct(bag[a]['decision_tpr'])} vs marginal "
        f"{pct(per_alpha[a]['methods'][MARGINAL]['decision_tpr'])}" for a in alphas) + ".")
    section.summary += [f"alpha {a:g}: bag FPR {pct(bag[a]['decision_fpr'], 2)} TPR {pct(bag[a]['decision_tpr'])}; "
                        f"marginal FPR {pct(per_alpha[a]['methods'][MARGINAL]['decision_fpr'], 2)} TPR "
                        f"{pct(per_alpha[a]['methods'][MARGINAL]['decision_tpr'])}" for a in alphas]
