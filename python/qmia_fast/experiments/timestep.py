"""Experiment `timestep`: the score's timestep swept for SecMI's t-error, the loss and PIA; power against scoring cost."""
from __future__ import annotations

from ..attack import BAG, MARGINAL
from .lab import Lab
from .summary import aggregate
from .writing import COLOURS, TITLES, Section, errorbar, finite, label_panel, new_figure, num, pct, seconds

NAME = "timestep"
TITLE = "Score and timestep"
METHOD_TITLES = {"secmi": "SecMI t-error (t_sec, k = {k})", "loss": "loss (t)", "pia": "PIA (t, p = 4)"}


def settings(lab: Lab) -> tuple[list[tuple[str, int, dict]], list[str]]:
    """(method, timestep, score overrides) for every setting the model's schedule allows, and notes on the rest."""
    budget, T = lab.budget, lab.target.schedule.T
    out, skipped = [], []
    for t in budget.secmi_t:
        if t < T and t % budget.secmi_k == 0:
            out.append(("secmi", t, {"method": "secmi", "t_sec": t, "k": budget.secmi_k}))
        else:
            skipped.append(f"secmi t_sec = {t}")
    for t in budget.loss_t:
        (out.append(("loss", t, {"method": "loss", "t": t, "n_draws": 1})) if t < T else skipped.append(f"loss t = {t}"))
    for t in budget.pia_t:
        (out.append(("pia", t, {"method": "pia", "t": t, "p": 4.0})) if t < T else skipped.append(f"pia t = {t}"))
    return out, skipped


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    grid, skipped = settings(lab)
    sets = lab.smaller_sets(budget.timestep_max_per_set)
    seeds = lab.seeds(budget.sweep_seeds)
    scored = []
    for method, t, overrides in grid:
        raw, cost = lab.score_sets(overrides, sets=sets)
        scored.append((method, t, raw, cost))
    results = []
    with lab.fit_bar(len(scored) * len(seeds), "timestep: fitting") as bar:
        for method, t, raw, cost in scored:
            fits = lab.fit_sets(raw, seeds=seeds, bar=bar, sets=sets, baselines=False)
            results.append({"method": method, "t": t, "cost": cost, **aggregate(fits)})
    section.text(
        f"Each setting scores the same {len(sets['members'])} members, {len(sets['public'])} public and "
        f"{len(sets['holdout'])} holdout images"
        + (f" (at most {budget.timestep_max_per_set} per set, a seeded subsample, because SecMI costs "
           f"t_sec / k + 1 UNet calls per image)" if budget.timestep_max_per_set else "")
        + f"; bag of {lab.n_models} at alpha = {lab.alpha:g}, {len(seeds)} bag seeds. The marginal threshold "
        "is the raw score's own power (no regressor, no seed). Scoring cost is wall time per image on this machine "
        "when the setting was first scored.")
    rows = []
    for r in results:
        bag, marginal = r["methods"][BAG], r["methods"][MARGINAL]
        per = r["cost"].get("per_image_s")
        rows.append([r["method"], r["t"], r["cost"]["unet_calls_per_image"],
                     f"{1000 * per:.2f}" if finite(per) else "n/a",
                     pct(marginal["tpr_at_1pct"]), pct(bag["tpr_at_1pct"]), num(marginal["auc"]), num(bag["auc"]),
                     seconds(r["fit_bag_s"]["mean"])])
    section.table(["score", "t", "UNet calls/image", "scoring ms/image", "marginal TPR@1%FPR", "bag TPR@1%FPR",
                   "marginal AUC", "bag AUC", "bag fit time"], rows)
    if skipped:
        section.notes.append(f"skipped (outside the model's {lab.target.schedule.T} timesteps): {', '.join(skipped)}")
    section.results.update(settings=results, sets={k: len(v) for k, v in sets.items()})
    methods = [m for m in ("secmi", "loss", "pia") if any(r["method"] == m for r in results)]

    def draw():
        figure, axes = new_figure(len(methods), 2, width=4.2, height=3.4)
        for col, method in enumerate(methods):
            rs = [r for r in results if r["method"] == method]
            ts = [r["t"] for r in rs]
            for row, (metric, ylabel, scale) in enumerate((("tpr_at_1pct", "TPR at 1% FPR (%)", 100.0),
                                                           ("auc", "AUC", 1.0))):
                ax = axes[row, col]
                errorbar(ax, ts, [r["methods"][BAG][metric] for r in rs], "QMIA bag (± sd)", COLOURS[BAG],
                         scale=scale)
                ax.plot(ts, [scale * r["methods"][MARGINAL][metric]["mean"] for r in rs], marker="s",
                        linestyle="--", color=COLOURS[MARGINAL], label=TITLES[MARGINAL])
                label_panel(ax, "t_sec (timesteps)" if method == "secmi" else "t (timesteps)", ylabel,
                            METHOD_TITLES[method].format(k=budget.secmi_k))
        return figure

    section.figure("timestep.png", f"TPR at 1% FPR (top) and AUC (bottom) of each score against its timestep; "
                   f"{len(sets['members'])} members vs {len(sets['holdout'])} holdout non-members.", draw)
    best = max(results, key=lambda r: r["methods"][BAG]["tpr_at_1pct"]["mean"])
    per_method = []
    for method in methods:
        rs = [r for r in results if r["method"] == method]
        top = max(rs, key=lambda r: r["methods"][BAG]["tpr_at_1pct"]["mean"])
        per_method.append(f"{method} peaks at t = {top['t']} (bag {pct(top['methods'][BAG]['tpr_at_1pct'])}, "
                          f"marginal {pct(top['methods'][MARGINAL]['tpr_at_1pct'])})")
    section.text("Reading: " + "; ".join(per_method) + f". Best overall: {best['method']} at t = {best['t']}.")
    inverted = [f"{r['method']} at t = {r['t']}" for r in results
                if finite(r["methods"][MARGINAL]["auc"].get("mean")) and r["methods"][MARGINAL]["auc"]["mean"] < 0.5]
    if inverted:
        section.text("AUC below 0.5 (" + ", ".join(inverted) + "): at these settings the raw score ranks the target's "
                     "members as *less* likely members than the non-members (their scores are higher, not lower). The "
                     "direction is the method's definition and is not flipped after looking at the evaluation data; "
                     "an AUC below 0.5 means the score carries no usable signal there in its defined direction.")
    section.summary += [f"{r['method']} t={r['t']}: bag {pct(r['methods'][BAG]['tpr_at_1pct'])} marginal "
                        f"{pct(r['methods'][MARGINAL]['tpr_at_1pct'])} AUC {num(r['methods'][BAG]['auc'])}"
                        for r in results]
