"""Experiment `defence`: Gaussian noise added to the target's eps output; attack power against the model's denoising loss."""
from __future__ import annotations

import numpy as np

from ..attack import BAG, MARGINAL
from ..pipeline.audit import subsample
from ..seeds import derive_seed
from .defended import defended_model
from .lab import Lab, score_label
from .summary import aggregate, cost_text
from .writing import COLOURS, TITLES, Section, errorbar, label_panel, new_figure, num, pct, seconds

NAME = "defence"
TITLE = "Defence: Gaussian noise on the eps output"


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    sets = lab.sets
    T = lab.target.schedule.T
    utility_t = [t for t in budget.utility_t if t < T]
    held = subsample(sets["holdout"], budget.utility_images, lab.spec.seed, "utility")
    pixels = int(np.prod(lab.target.image_shape))
    noise_seed = derive_seed(lab.spec.seed, 37)
    seeds = lab.seeds(budget.sweep_seeds)

    scored = {}
    for sigma in budget.sigmas:
        model = lab.target if sigma == 0 else defended_model(lab.target, sigma, noise_seed)
        raw, cost = lab.base_scores() if sigma == 0 else lab.score_sets(
            target=model, label=f"defended-s{sigma:g}-{score_label(lab.scorer().config)}")
        utility = {}
        for t in utility_t:
            values, _ = lab.score_images(lab.images[held], held, f"utility-s{sigma:g}-loss-t{t}",
                                         overrides={"method": "loss", "t": t, "n_draws": 1}, target=model)
            utility[t] = float(np.mean(values) / pixels)
        scored[sigma] = (raw, cost, utility)
    by = {}
    with lab.fit_bar(len(scored) * len(seeds), "defence: fitting") as bar:
        for sigma, (raw, cost, utility) in scored.items():
            fits = lab.fit_sets(raw, seeds=seeds, bar=bar, baselines=False)
            by[sigma] = {**aggregate(fits), "utility_mse_per_pixel": {str(t): v for t, v in utility.items()},
                         "utility_mean": float(np.mean(list(utility.values()))) if utility else float("nan"),
                         "score_cost": cost}
    base_utility = by[min(by)]["utility_mean"]
    section.text(
        "The defended target returns eps_theta(x, t) + sigma * n with n ~ N(0, I), a fresh draw for every distinct "
        "query (keyed by the query, so the same query gets the same answer). The attack is unchanged (its score "
        f"and bag of {lab.n_models} at alpha = {lab.alpha:g}, {len(seeds)} seeds). The cost to the model is its "
        f"denoising loss, the mean squared error of the eps prediction per pixel, on {len(held)} holdout images at "
        f"t in {{{', '.join(map(str, utility_t))}}} (one noise draw per image). Attack scores: "
        + cost_text(scored[min(scored)][1]) + ".")
    rows = []
    for sigma, agg in by.items():
        bag, marginal = agg["methods"][BAG], agg["methods"][MARGINAL]
        rows.append([f"{sigma:g}", pct(bag["tpr_at_1pct"]), pct(marginal["tpr_at_1pct"]), num(bag["auc"]),
                     num(marginal["auc"])] + [f"{agg['utility_mse_per_pixel'][str(t)]:.4f}" for t in utility_t]
                    + [f"{agg['utility_mean'] / base_utility:.2f}x" if base_utility else "n/a",
                       seconds(agg["fit_bag_s"]["mean"])])
    section.table(["sigma", "bag TPR@1%FPR", "marginal TPR@1%FPR", "bag AUC", "marginal AUC"]
                  + [f"denoising MSE t={t}" for t in utility_t] + ["MSE vs undefended (mean over t)", "bag fit time"],
                  rows)
    section.results.update(by_sigma={f"{s:g}": v for s, v in by.items()}, utility_t=utility_t,
                           utility_images=len(held), noise_seed=noise_seed)
    sigmas = list(by)

    def draw():
        figure, axes = new_figure(3, 1, width=4.4, height=3.8)
        power, trade, loss = axes[0]
        nonzero = [s for s in sigmas if s > 0]
        for name in (BAG, MARGINAL):
            errorbar(power, sigmas, [by[s]["methods"][name]["tpr_at_1pct"] for s in sigmas], TITLES[name],
                     COLOURS[name])
            trade.plot([by[s]["utility_mean"] for s in sigmas],
                       [100 * by[s]["methods"][name]["tpr_at_1pct"]["mean"] for s in sigmas], marker="o",
                       color=COLOURS[name], label=TITLES[name])
        for s in sigmas:
            trade.annotate(f"σ={s:g}", (by[s]["utility_mean"], 100 * by[s]["methods"][BAG]["tpr_at_1pct"]["mean"]),
                           fontsize=7, textcoords="offset points", xytext=(4, 4))
        if nonzero:
            power.set_xscale("symlog", linthresh=min(nonzero))
        label_panel(power, "noise scale sigma on eps (0 = undefended)", "TPR at 1% FPR (%)",
                    "Attack power vs defence strength")
        trade.set_xscale("log")
        label_panel(trade, f"denoising MSE per pixel (mean over t = {', '.join(map(str, utility_t))})",
                    "TPR at 1% FPR (%)", "Privacy / utility trade-off", grid="both")
        for s in sigmas:
            loss.plot(utility_t, [by[s]["utility_mse_per_pixel"][str(t)] for t in utility_t], marker="o",
                      label=f"σ = {s:g}")
        loss.set_yscale("log")
        label_panel(loss, "timestep t", "denoising MSE per pixel", f"Model cost ({len(held)} holdout images)",
                    grid="both")
        return figure

    section.figure("defence.png", "Attack TPR at 1% FPR against the defence's noise scale (left, ± sd over seeds), "
                   "against the defended model's denoising loss (middle: each point one sigma), and the denoising "
                   "loss by timestep (right).", draw)
    undefended = by[sigmas[0]]["methods"][BAG]["tpr_at_1pct"]["mean"]
    half = [s for s in sigmas if by[s]["methods"][BAG]["tpr_at_1pct"]["mean"] <= undefended / 2]
    if half and base_utility:
        s = half[0]
        section.text(f"Reading: the bag's TPR@1%FPR first fell to half its undefended value ({100 * undefended:.1f}%) "
                     f"at sigma = {s:g} ({pct(by[s]['methods'][BAG]['tpr_at_1pct'])}), where the denoising loss "
                     f"was {by[s]['utility_mean'] / base_utility:.2f}x the undefended model's.")
    section.summary += [f"sigma {s:g}: bag {pct(by[s]['methods'][BAG]['tpr_at_1pct'])} marginal "
                        f"{pct(by[s]['methods'][MARGINAL]['tpr_at_1pct'])} MSE {by[s]['utility_mean']:.4f}"
                        for s in sigmas]
