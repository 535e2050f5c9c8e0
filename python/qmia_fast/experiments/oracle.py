"""Experiment `oracle`: the attack on a synthetic problem whose true per-image quantile is known, beside that oracle."""
from __future__ import annotations

from collections import Counter
from statistics import NormalDist

import numpy as np

from ..attack import BAG, MARGINAL, SINGLE, synthetic_problem, vote_threshold
from ..seeds import derive_seed
from .lab import Lab, method_metrics
from .stats import mean_sd, rate_interval
from .summary import aggregate
from .writing import COLOURS, TITLES, Section, finite, label_panel, new_figure, num, pct, seconds

NAME = "oracle"
TITLE = "Oracle: synthetic data with known per-image quantiles"
ORACLE_Q, ORACLE_LR = "oracle_quantile", "oracle_likelihood_ratio"
ORACLE_TITLES = {ORACLE_Q: "oracle: true per-image quantile", ORACLE_LR: "oracle: likelihood ratio (best possible)"}
_SHOWN = 400  # evaluation non-members whose thresholds the figure shows


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    alpha = lab.alpha
    n = budget.oracle_public
    data_seed = derive_seed(lab.spec.seed, 41)
    public = synthetic_problem(n, 0, budget.oracle_size, seed=data_seed)
    test = synthetic_problem(n, n, budget.oracle_size, seed=derive_seed(lab.spec.seed, 43))
    meta = test.meta
    spread = meta["base_spread"] + meta["spread_slope"] * test.brightness   # sd of a non-member's log-score
    z_alpha = NormalDist().inv_cdf(alpha)
    true_q = spread * z_alpha
    y = np.log(test.scores)
    shift = meta["member_shift"]
    oracle = {
        ORACLE_Q: method_metrics(-y / spread, y < true_q, test.labels, alpha),
        # Neyman-Pearson: log p_member(y) / p_nonmember(y) for N(-shift, s^2) against N(0, s^2).
        ORACLE_LR: method_metrics(-(2 * y * shift + shift ** 2) / (2 * spread ** 2), y < true_q, test.labels, alpha),
    }
    oracle[ORACLE_LR].pop("decision_tpr"), oracle[ORACLE_LR].pop("decision_fpr")
    non = test.labels == 0
    shown = np.flatnonzero(non)[:_SHOWN]

    def threshold_error(attack, result) -> dict:
        bag_q = vote_threshold(result.thresholds)  # the one threshold equivalent to the vote
        out = {"bag_rmse": float(np.sqrt(np.mean((bag_q[non] - true_q[non]) ** 2))),
               "bag_bias": float(np.mean(bag_q[non] - true_q[non])),
               "marginal_rmse": float(np.sqrt(np.mean((attack.marginal_threshold - true_q[non]) ** 2))),
               "shown_bag": bag_q[shown].tolist(), "marginal": attack.marginal_threshold}
        if result.single is not None:
            single_q = result.single.thresholds[0]
            out.update(single_rmse=float(np.sqrt(np.mean((single_q[non] - true_q[non]) ** 2))),
                       single_bias=float(np.mean(single_q[non] - true_q[non])), shown_single=single_q[shown].tolist())
        return out

    seeds = lab.seeds(budget.seeds)
    # The user's attack (default: auto + conformal) beside the paper's bag with the raw rule (the earlier default).
    settings = {"selected": (lab.spec.attack.regressor, lab.spec.attack.calibration), "paper": ("paper", "none")}
    if settings["selected"] == settings["paper"]:
        settings.pop("paper")
    by_setting = {}
    with lab.fit_bar(len(settings) * len(seeds), "oracle: fitting") as bar:
        for key, (regressor, calibration) in settings.items():
            fits = lab.fit_seeds(public.images, public.scores, test.images, test.scores, test.labels, seeds=seeds,
                                 bar=bar, extra=threshold_error, extra_name="oracle-threshold-error",
                                 regressor=regressor, calibration=calibration)
            errors = {k: mean_sd(f["extra"][k] for f in fits if k in f["extra"])
                      for k in ("bag_rmse", "single_rmse", "marginal_rmse", "bag_bias", "single_bias")}
            by_setting[key] = (fits, aggregate(fits), errors)
    fits, agg, errors = by_setting["selected"]
    section.text(
        f"`synthetic_problem`: {budget.oracle_size}x{budget.oracle_size} images of brightness b ~ U(0, 1); a "
        f"non-member's log-score is ({meta['base_spread']:g} + {meta['spread_slope']:g} b) z with z ~ N(0, 1), a "
        f"member's is shifted down by {shift:g}. So the true alpha-quantile of an image is known, "
        f"q_alpha(x) = ({meta['base_spread']:g} + {meta['spread_slope']:g} b) Phi^-1(alpha), and so is the "
        f"likelihood ratio, the best possible test at any FPR. {n:,} public non-members; evaluation "
        f"{n:,} members + {n:,} non-members; alpha = {alpha:g}; bag of {lab.n_models}, {len(seeds)} bag seeds. "
        "Threshold RMSE: root mean square distance between a method's threshold and the true quantile over the "
        "evaluation non-members, in log-score units.")
    rows = []
    for name in (ORACLE_Q, ORACLE_LR):
        m = oracle[name]
        rows.append([ORACLE_TITLES[name], pct(m.get("decision_tpr", float("nan")), 2),
                     pct(m.get("decision_fpr", float("nan")), 2), pct(m["tpr_at_1pct"], 2), num(m["auc"]),
                     "0" if name == ORACLE_Q else "-", "-"])
    for key, (regressor, calibration) in settings.items():
        _, a, e = by_setting[key]
        rmse = {BAG: e["bag_rmse"], SINGLE: e["single_rmse"], MARGINAL: e["marginal_rmse"]}
        fit_s = {BAG: a["fit_total_s"]["mean"], SINGLE: a["fit_single_s"]["mean"], MARGINAL: None}
        label = f"--regressor {regressor}, calibration {calibration}"
        for name in (BAG, SINGLE, MARGINAL):
            m = a["methods"][name]
            rows.append([f"{TITLES[name]} ({label})", pct(m["decision_tpr"], 2), pct(m["decision_fpr"], 2),
                         pct(m["tpr_at_1pct"], 2), num(m["auc"]), num(rmse[name]),
                         seconds(fit_s[name]) if fit_s[name] else "-"])
    section.table(["method", "decision TPR", "observed FPR", "TPR@1%FPR (ROC)", "AUC", "threshold RMSE",
                   "fit time (bag: whole fit)"], rows)
    chosen = ", ".join(f"{k} x{v}" for k, v in sorted(Counter(agg["chosen"]).items()))
    section.text(f"Regressor chosen by `{settings['selected'][0]}` over the seeds: {chosen}.")
    section.results.update(alpha=alpha, n_public=n, problem=meta, oracle=oracle, fitted=agg, threshold_error=errors,
                           by_setting={key: {"regressor": settings[key][0], "calibration": settings[key][1],
                                             "fitted": a, "threshold_error": e}
                                       for key, (_, a, e) in by_setting.items()},
                           fpr_ci_oracle=list(rate_interval([oracle[ORACLE_Q]["fp"]], int(non.sum()))))
    brightness = test.brightness[shown]
    first = fits[0]["extra"]

    def draw():
        figure, axes = new_figure(2, 1, width=5.0)
        ax, roc_ax = axes[0, 0], axes[0, 1]
        order = np.argsort(brightness)
        ax.scatter(brightness, y[shown], s=4, color="lightgrey", label="non-member log-scores")
        ax.plot(brightness[order], true_q[shown][order], color=COLOURS["oracle"], linewidth=2,
                label="true alpha-quantile")
        ax.scatter(brightness, first["shown_bag"], s=5, color=COLOURS[BAG], label="bag threshold (seed 1)")
        if "shown_single" in first:
            ax.scatter(brightness, first["shown_single"], s=5, color=COLOURS[SINGLE], alpha=0.6,
                       label="single regressor threshold")
        ax.axhline(first["marginal"], color=COLOURS[MARGINAL], linestyle="--", label="marginal threshold")
        label_panel(ax, "image brightness b", "log-score",
                    f"Thresholds at alpha = {alpha:g} ({len(shown)} non-members)", legend_loc="upper left")
        names = [ORACLE_LR, ORACLE_Q, BAG, SINGLE, MARGINAL]
        values = [oracle[ORACLE_LR]["tpr_at_1pct"], oracle[ORACLE_Q]["tpr_at_1pct"]] + [
            agg["methods"][k]["tpr_at_1pct"]["mean"] for k in (BAG, SINGLE, MARGINAL)]
        sds = [0, 0] + [agg["methods"][k]["tpr_at_1pct"]["sd"] for k in (BAG, SINGLE, MARGINAL)]
        sds = [100 * s if finite(s) else 0 for s in sds]
        colours = ["darkgreen", COLOURS["oracle"], COLOURS[BAG], COLOURS[SINGLE], COLOURS[MARGINAL]]
        roc_ax.bar(range(len(names)), [100 * v for v in values], yerr=sds, capsize=3, color=colours)
        roc_ax.set_xticks(range(len(names)))
        roc_ax.set_xticklabels(["likelihood\nratio", "true\nquantile", "QMIA\nbag", "single\nregressor", "marginal"],
                               fontsize=8)
        roc_ax.set_ylabel("TPR at 1% FPR (%)")
        roc_ax.set_title(f"Power against the oracles ({n:,} members)")
        roc_ax.grid(True, axis="y", alpha=0.3)
        return figure

    section.figure("oracle.png", "Left: each method's threshold against the true alpha-quantile as a function of the "
                   "image's brightness. Right: TPR at 1% FPR of the two oracles and the fitted methods (± sd over "
                   "seeds).", draw)
    bag = agg["methods"][BAG]
    paper_text = ""
    if "paper" in by_setting:
        _, a, e = by_setting["paper"]
        paper_text = (f" The paper's bag with the raw rule: {pct(a['methods'][BAG]['tpr_at_1pct'], 2)}, thresholds "
                      f"{num(e['bag_rmse'])} from the true ones.")
    section.text(f"Reading: the bag reaches {pct(bag['tpr_at_1pct'], 2)} TPR@1%FPR against "
                 f"{pct(oracle[ORACLE_Q]['tpr_at_1pct'], 2)} for the true quantiles and "
                 f"{pct(oracle[ORACLE_LR]['tpr_at_1pct'], 2)} for the likelihood ratio; its thresholds are "
                 f"{num(errors['bag_rmse'])} log-score units (RMSE) from the true ones, against "
                 f"{num(errors['marginal_rmse'])} for the marginal threshold." + paper_text)
    section.summary.append(f"oracle quantile {pct(oracle[ORACLE_Q]['tpr_at_1pct'], 2)}, LR "
                           f"{pct(oracle[ORACLE_LR]['tpr_at_1pct'], 2)}, bag {pct(bag['tpr_at_1pct'], 2)}, single "
                           f"{pct(agg['methods'][SINGLE]['tpr_at_1pct'], 2)}, marginal "
                           f"{pct(agg['methods'][MARGINAL]['tpr_at_1pct'], 2)}")
