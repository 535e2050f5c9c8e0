"""Experiment `alpha`: the decision level swept; observed FPR against the target (calibration) and the TPR bought."""
from __future__ import annotations

import numpy as np

from ..attack import BAG, CALIBRATIONS, MARGINAL, SINGLE
from .lab import Lab
from .summary import aggregate, cost_text
from .writing import COLOURS, TITLES, Section, errorbar, interval, label_panel, new_figure, pct, seconds

NAME = "alpha"
TITLE = "Decision level alpha: calibration and power"


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    raw, cost = lab.base_scores()
    sets = lab.sets
    seeds = lab.seeds(budget.seeds)
    # The user's calibration (default conformal) beside the other one, on the same regressor and seeds.
    kinds = [lab.spec.attack.calibration] + [k for k in CALIBRATIONS if k != lab.spec.attack.calibration]
    by_kind: dict[str, dict[float, dict]] = {kind: {} for kind in kinds}
    with lab.fit_bar(len(kinds) * len(budget.alphas) * len(seeds), "alpha: fitting") as bar:
        for kind in kinds:
            for alpha in budget.alphas:
                fits = lab.fit_sets(raw, seeds=seeds, bar=bar, alpha=alpha, calibration=kind)
                by_kind[kind][alpha] = aggregate(fits) | {"n_calibration": fits[0]["n_calibration"],
                                                          "calibration_used": fits[0]["calibration"],
                                                          "chosen": [f["chosen"] for f in fits]}
    per_alpha = by_kind[kinds[0]]
    n_neg = len(sets["holdout"])
    section.text(
        f"For each alpha the bag ({lab.n_models} regressors, regressor {lab.spec.attack.regressor}), a single "
        f"regressor and the marginal threshold are fitted on the {len(sets['public'])} public non-members with "
        f"{len(seeds)} bag seeds and judged on {len(sets['members'])} members and {n_neg} holdout non-members, "
        f"once with each calibration: conformal (a seeded part of the public set held out of all fitting; the "
        f"thresholds shifted so that P(member call) <= alpha for exchangeable non-members) and none (the paper's "
        f"raw rule on the whole public set). The guarantee is on the mean over calibration draws; one run's FPR "
        f"varies around it. At alpha = {min(budget.alphas):g} the holdout allows an expected "
        f"{min(budget.alphas) * n_neg:.1f} false positives, so the interval is wide there (the holdout resolves an "
        f"alpha once it expects at least 10). Scores: {cost_text(cost)}.")
    rows = []
    for alpha in budget.alphas:
        for kind in kinds:
            agg = by_kind[kind][alpha]
            for name in (BAG, SINGLE, MARGINAL):
                m = agg["methods"].get(name)
                if m is None:
                    continue
                low, high = m["fpr_ci"]
                calibration = (f"conformal ({agg['n_calibration']})" if agg["calibration_used"] == "conformal"
                               else "none" if kind == "none" else "none (public set too small)")
                rows.append([f"{alpha:g}", calibration, TITLES[name], pct(m["decision_fpr"], 2),
                             interval(low, high, 2), "yes" if low <= alpha <= high else "**no**",
                             pct(m["decision_tpr"]), interval(*m["tpr_ci"]), pct(m["tpr_at_alpha"]),
                             seconds(agg["fit_bag_s"]["mean"]) if name == BAG else
                             seconds(agg["fit_single_s"]["mean"]) if name == SINGLE else "-"])
    section.table(["alpha", "calibration (images)", "method", "observed FPR", "95% CI", "alpha in CI",
                   "decision TPR", "95% CI", "TPR at FPR = alpha (ROC)", "fit time"], rows)
    section.results.update(score_cost=cost, n_holdout=n_neg, n_members=len(sets["members"]),
                           by_alpha={f"{a:g}": agg for a, agg in per_alpha.items()},
                           by_calibration={kind: {f"{a:g}": agg for a, agg in values.items()}
                                           for kind, values in by_kind.items()})
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
        other = kinds[1]
        raw_stats = [{**by_kind[other][a]["methods"][BAG]["decision_fpr"],
                      "mean": max(by_kind[other][a]["methods"][BAG]["decision_fpr"]["mean"], floor)} for a in alphas]
        errorbar(calib, alphas, raw_stats, f"{TITLES[BAG]}, calibration {other}", "tab:red", scale=1.0)
        calib.set_xscale("log")
        calib.set_yscale("log")
        calib.set_xlim(min(alphas) / 1.5, max(alphas) * 1.5)
        calib.set_ylim(floor / 1.2, 1)
        label_panel(calib, "target FPR alpha", "observed FPR on the holdout",
                    f"Calibration {kinds[0]} ({n_neg} holdout non-members)", legend_loc="upper left", grid="both")
        power.set_xscale("log")
        label_panel(power, "target FPR alpha", "TPR of the alpha decision (%)",
                    f"Power ({len(sets['members'])} members, ± sd over {len(seeds)} seeds)", grid="both")
        return figure

    section.figure("alpha_calibration.png", "Observed false-positive rate of the alpha decision against its target "
                   "(left, log-log; bars: sd over bag seeds; points at 0 drawn at the floor), and its TPR (right).",
                   draw)
    bag = {a: per_alpha[a]["methods"][BAG] for a in alphas}

    def outside(values):
        return [f"{a:g}" for a in alphas if not (values[a]["fpr_ci"][0] <= a <= values[a]["fpr_ci"][1])]

    off = outside(bag)
    off_other = outside({a: by_kind[kinds[1]][a]["methods"][BAG] for a in alphas})
    section.text(f"Reading: with calibration {kinds[0]} the bag's observed FPR is " + (
        "within the 95% interval of its target at every alpha" if not off else
        f"outside the 95% interval of its target at alpha = {', '.join(off)}") + f"; with calibration {kinds[1]} "
        + ("within it at every alpha." if not off_other else f"outside it at alpha = {', '.join(off_other)}.")
        + " " + "; ".join(
        f"alpha {a:g}: bag TPR {pct(bag[a]['decision_tpr'])} vs marginal "
        f"{pct(per_alpha[a]['methods'][MARGINAL]['decision_tpr'])}" for a in alphas) + ".")
    section.summary += [f"alpha {a:g}: bag FPR {pct(bag[a]['decision_fpr'], 2)} TPR {pct(bag[a]['decision_tpr'])}; "
                        f"marginal FPR {pct(per_alpha[a]['methods'][MARGINAL]['decision_fpr'], 2)} TPR "
                        f"{pct(per_alpha[a]['methods'][MARGINAL]['decision_tpr'])}" for a in alphas]
