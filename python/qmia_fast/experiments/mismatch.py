"""Experiment `mismatch`: the attacker's public set drawn partly or wholly from a shifted distribution."""
from __future__ import annotations

import numpy as np

from ..attack import BAG, MARGINAL
from ..seeds import derive_seed
from .lab import Lab
from .summary import aggregate, cost_text
from ..data.loader import FASHION_MNIST_CLASSES
from .writing import COLOURS, Section, errorbar, label_panel, new_figure, pct, seconds

NAME = "mismatch"
TITLE = "Public-set distribution mismatch"
KIND_COLOURS = {"classes": "tab:red", "brightness": "tab:olive", "contrast": "tab:cyan", "noise": "tab:purple"}
BRIGHTNESS_SHIFT = 0.2   # of the full pixel range, added
CONTRAST_FACTOR = 0.5    # deviations from each image's mean, scaled
NOISE_SD = 0.1           # of the full pixel range, Gaussian, per pixel


def shift_images(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """uint8 images with a pixel-level shift applied (brightness, contrast or noise), rounded back to uint8."""
    x = images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
    if kind == "brightness":
        x = x + BRIGHTNESS_SHIFT
    elif kind == "contrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = mean + CONTRAST_FACTOR * (x - mean)
    elif kind == "noise":
        x = x + NOISE_SD * np.random.default_rng(seed).standard_normal(x.shape)
    else:
        raise ValueError(kind)
    return np.clip(np.round(np.clip(x, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


def describe(kind: str, group: list[int] | None, names: bool) -> str:
    if kind == "classes":
        shown = ", ".join(f"{c} ({FASHION_MNIST_CLASSES[c]})" if names and 0 <= c < 10 else str(c) for c in group)
        return f"public images of classes {shown} only"
    return {"brightness": f"pixel values + {BRIGHTNESS_SHIFT:g} of the range, clipped",
            "contrast": f"contrast x{CONTRAST_FACTOR:g} around each image's mean",
            "noise": f"Gaussian pixel noise, sd {NOISE_SD:g} of the range, clipped"}[kind]


def run(lab: Lab, section: Section) -> None:
    budget = lab.budget
    raw, _ = lab.base_scores()
    sets = lab.sets
    public = np.asarray(sets["public"])
    raw_public = dict(zip(public.tolist(), raw["public"]))
    eval_images, labels = lab.evaluation()
    eval_raw = np.concatenate([raw["members"], raw["holdout"]])
    rng = np.random.default_rng(derive_seed(lab.spec.seed, 29))
    order = rng.permutation(public)

    kinds, notes, group = list(budget.shift_kinds), [], None
    class_labels = lab.prepared.loaded.labels
    if "classes" in kinds:
        if class_labels is None:
            kinds.remove("classes")
            notes.append("classes shift skipped: the data carries no class labels")
        else:
            values = np.unique(class_labels)
            group = [int(c) for c in values[len(values) // 2:]]  # the upper half of the classes
            in_group = order[np.isin(class_labels[order], group)]
            if len(in_group) < 10:
                kinds.remove("classes")
                notes.append(f"classes shift skipped: only {len(in_group)} public images in classes {group}")
    n_public = len(public) // 2
    if "classes" in kinds:
        n_public = min(n_public, len(in_group))
    base = order[:n_public]
    names = lab.spec.data.path == "builtin"

    shifted, shift_costs = {}, {}
    for kind in kinds:
        if kind != "classes":
            images = shift_images(lab.images[base], kind, derive_seed(lab.spec.seed, 31, len(kind)))
            # Scored under the originals' sample identities, so each shifted image meets the same noise as its original.
            scores, shift_costs[kind] = lab.score_images(images, base, f"{kind}-shifted-public")
            shifted[kind] = (images, scores)

    def public_at(kind: str, fraction: float):
        m = int(round(fraction * n_public))
        if kind == "classes":
            chosen = in_group[:m]
            rest = order[~np.isin(order, chosen)][:n_public - m]
            idx = np.concatenate([chosen, rest])
            return lab.images[idx], np.array([raw_public[i] for i in idx.tolist()])
        images, scores = shifted[kind]
        original = np.array([raw_public[i] for i in base[m:].tolist()])
        return (np.concatenate([images[:m], lab.images[base[m:]]]), np.concatenate([scores[:m], original]))

    seeds = lab.seeds(budget.sweep_seeds)
    fractions = sorted(set(budget.shift_fractions) | {0.0})
    grid = [(k, f) for k in kinds for f in fractions if f > 0] + [("none", 0.0)]
    by = {}
    with lab.fit_bar(len(grid) * len(seeds), "mismatch: fitting") as bar:
        for kind, fraction in grid:
            images, scores = public_at(kinds[0] if kind == "none" else kind, fraction)
            fits = lab.fit_seeds(images, scores, eval_images, eval_raw, labels, seeds=seeds, bar=bar, baselines=False)
            by[(kind, fraction)] = aggregate(fits)
    clean = by[("none", 0.0)]

    section.text(
        f"The public set is {n_public} images (half the public set, so that the class shift can fill it without "
        f"repeats): a fraction f of them is drawn from a shifted distribution, the rest from the public set as "
        f"it is. Members and holdout are unchanged. Shifts: "
        + "; ".join(f"**{k}**: {describe(k, group, names)}" for k in kinds)
        + f". Bag of {lab.n_models} at alpha = {lab.alpha:g}, {len(seeds)} seeds; {len(sets['members'])} members, "
          f"{len(sets['holdout'])} holdout non-members. The marginal threshold's ROC does not depend on the "
          f"public set (only its decision threshold does), so only its decision is shown.")
    def row(kind, f, agg):
        a = agg["methods"]
        return [kind, f"{f:g}", pct(a[BAG]["decision_fpr"], 2), pct(a[MARGINAL]["decision_fpr"], 2),
                pct(a[BAG]["decision_tpr"]), pct(a[MARGINAL]["decision_tpr"]), pct(a[BAG]["tpr_at_1pct"]),
                seconds(agg["fit_bag_s"]["mean"])]

    rows = [row("none", 0.0, clean)] + [row(kind, f, by[(kind, f)]) for kind in kinds for f in fractions if f > 0]
    section.table(["shift", "fraction f", "bag FPR of alpha decision", "marginal FPR", "bag decision TPR",
                   "marginal decision TPR", "bag TPR@1%FPR (ROC)", "bag fit time"], rows)
    if shift_costs:
        section.text("Scoring the shifted copies: " + "; ".join(f"{k}: {cost_text(c)}" for k, c in shift_costs.items())
                     + ".")
    section.notes += notes
    section.results.update(n_public=n_public, kinds=kinds, class_group=group, fractions=fractions,
                           descriptions={k: describe(k, group, names) for k in kinds},
                           by_shift={f"{k}@{f:g}": v for (k, f), v in by.items()})

    def draw():
        figure, axes = new_figure(3, 1, width=4.4, height=3.8)
        panels = (("decision_fpr", "observed FPR of the alpha decision (%)", "False positives"),
                  ("decision_tpr", "TPR of the alpha decision (%)", "Decision power"),
                  ("tpr_at_1pct", "bag TPR at 1% FPR, ROC (%)", "Ranking power"))
        for ax, (metric, ylabel, title) in zip(axes[0], panels):
            for kind in kinds:
                stats = [by[("none", 0.0) if f == 0 else (kind, f)] for f in fractions]
                errorbar(ax, fractions, [s["methods"][BAG][metric] for s in stats], f"bag, {kind}",
                         KIND_COLOURS.get(kind))
                if metric != "tpr_at_1pct":
                    ax.plot(fractions, [100 * s["methods"][MARGINAL][metric]["mean"] for s in stats], linestyle=":",
                            marker="x", color=KIND_COLOURS.get(kind), label=f"marginal, {kind}")
            if metric == "decision_fpr":
                ax.axhline(100 * lab.alpha, color=COLOURS[MARGINAL], linestyle="--", label="target alpha")
            label_panel(ax, "fraction f of the public set shifted", ylabel, title, legend_size=6)
        return figure

    section.figure("mismatch.png", f"Observed FPR (left) and TPR (middle) of the alpha = {lab.alpha:g} decision, and the "
                   "bag's TPR at 1% FPR from its ROC (right), as a growing share of the public set is shifted "
                   "(solid: bag ± sd over seeds; dotted: marginal threshold).", draw)
    worst = max(((k, f) for k in kinds for f in fractions if f > 0),
                key=lambda kf: abs(by[kf]["methods"][BAG]["decision_fpr"]["mean"] - lab.alpha), default=None)
    if worst is not None:
        a = by[worst]["methods"]
        section.text(f"Reading: with a matched public set the bag's alpha decision had FPR "
                     f"{pct(clean['methods'][BAG]['decision_fpr'], 2)}; the largest drift was under "
                     f"{worst[0]} at f = {worst[1]:g}: FPR {pct(a[BAG]['decision_fpr'], 2)} (marginal "
                     f"{pct(a[MARGINAL]['decision_fpr'], 2)}), decision TPR {pct(a[BAG]['decision_tpr'])}.")
    section.summary += [f"{k} f={f:g}: bag FPR {pct(v['methods'][BAG]['decision_fpr'], 2)} TPR "
                        f"{pct(v['methods'][BAG]['decision_tpr'])}" for (k, f), v in by.items()]
