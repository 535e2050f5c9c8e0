"""Experiment `targets`: the same attack on several targets (given, or trained here at a few sizes, lengths and schedules)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..attack import BAG, MARGINAL
from ..errors import ConfigError
from ..pipeline.specs import ModelSpec
from ..progress import progress_bar
from ..runtime import resolve_device
from ..schedule import cosine_schedule, linear_schedule
from .lab import Lab, score_label
from .summary import aggregate
from .writing import COLOURS, TITLES, Section, finite, new_figure, num, pct, seconds

NAME = "targets"
TITLE = "Across targets: size, training length, schedule"

# The shipped demo's architecture and recipe (scripts/make_demo.py), and a smaller UNet.
DEMO_UNET = {"ch": 32, "ch_mult": [1, 2, 2], "attn": [2], "num_res_blocks": 1, "dropout": 0.0}
SMALL_UNET = {"ch": 32, "ch_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0}
RECIPE = {"batch_size": 32, "lr": 1e-3, "ema_decay": 0.999, "grad_clip": 1.0, "weight_decay": 0.0, "hflip": False,
          "seed": 0}
# name -> (UNet, schedule kind, multiple of --train-steps, variant it continues from, description)
VARIANTS = {
    "linear": (DEMO_UNET, "linear", 1, None, "demo UNet, linear betas"),
    "linear-long": (DEMO_UNET, "linear", 2, "linear", "demo UNet, linear betas, twice as long (continues 'linear')"),
    "cosine": (DEMO_UNET, "cosine", 1, None, "demo UNet, cosine schedule"),
    "small": (SMALL_UNET, "linear", 1, None, "2-level UNet without attention, linear betas"),
}
NOT_SUPPORTED = ("v-prediction targets are not trained here: train_ddpm trains eps-prediction only (its loss is "
                 "the noise-prediction MSE); v- or x0-prediction models given with --targets are scored through "
                 "their eps conversion")


def check_variants(names) -> tuple[str, ...]:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return tuple(names)


def train_variant(lab: Lab, name: str, steps: int, root: Path) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or find finished) variant `name` on the audit's members under root/name."""
    from ..training import train_ddpm

    unet, kind, multiple, parent, _ = VARIANTS[name]
    folder = root / name
    total = steps * multiple
    if parent is not None and not (folder / "checkpoint.pt").exists():
        parent_folder, _ = train_variant(lab, parent, steps, root)
        shutil.copytree(parent_folder, folder, dirs_exist_ok=True)
    T = lab.target.schedule.T
    schedule = linear_schedule(T) if kind == "linear" else cosine_schedule(T)
    members = lab.images[lab.sets["members"]]
    recipe = {**RECIPE, "warmup": max(1, min(200, steps // 4)), "save_every": max(1, min(500, total))}
    started = time.perf_counter()
    with progress_bar(lab.progress, total, f"training target {name}") as bar:
        summary = train_ddpm(members, folder, unet={**unet, "T": T}, schedule=schedule, steps=total,
                             device=resolve_device(lab.spec.score.device), metadata={"variant": name},
                             progress=lambda step, n, loss: bar.update(1), **recipe)
    summary = {k: summary[k] for k in ("steps", "wall_time_s", "final_loss_mean", "parameters")}
    summary["this_call_s"] = time.perf_counter() - started
    return folder, summary


def run(lab: Lab, section: Section, targets: tuple[str, ...] = (), variants: tuple[str, ...] | None = None,
        train_steps: int | None = None) -> None:
    budget = lab.budget
    steps = train_steps or budget.train_steps
    variants = budget.variants if variants is None else variants
    base_name = "demo target (shipped)" if lab.spec.model.path == "builtin" else f"--model {Path(lab.spec.model.path).name}"
    entries: list[dict[str, Any]] = [{"name": base_name, "model": lab.target, "origin": lab.spec.model.path}]
    for path in targets:
        entries.append({"name": Path(path).name or path, "model": ModelSpec(path=path).load(), "origin": path})
    notes = [NOT_SUPPORTED]
    if not targets:
        root = lab.out / "targets"
        for name in variants:
            try:
                folder, summary = train_variant(lab, name, steps, root)
            except ConfigError as exc:  # e.g. an image size the variant's UNet cannot downsample
                notes.append(f"variant {name} skipped: {exc}")
                continue
            entries.append({"name": name, "model": ModelSpec(path=str(folder)).load(), "origin": str(folder),
                            "training": summary, "description": VARIANTS[name][4]})
    settings = {k: v for k, v in lab.settings.items()}
    seeds = lab.seeds(budget.sweep_seeds)
    scored = []
    for entry in entries:
        model = entry["model"]
        if tuple(model.image_shape) != tuple(lab.target.image_shape):
            raise ConfigError(f"--targets {entry['origin']}: the model takes {model.image_shape} images but the data "
                              f"is {lab.target.image_shape}; give targets trained on this data")
        raw, cost = lab.score_sets(settings, target=model, label=f"target-{entry['name']}-"
                                   f"{score_label(lab.scorer().config)}".replace(" ", "-"))
        scored.append((entry, raw, cost))
    rows, results = [], []
    with lab.fit_bar(len(scored) * len(seeds), "targets: fitting") as bar:
        for entry, raw, cost in scored:
            fits = lab.fit_sets(raw, seeds=seeds, bar=bar, baselines=False)
            agg = aggregate(fits)
            model = entry["model"]
            meta = (model.config or {}).get("metadata") or {}
            params = sum(p.numel() for p in model.parameters())
            schedule = (model.config or {}).get("schedule", {}).get("kind", "?")
            steps_done = (entry.get("training") or {}).get("steps", meta.get("step", "?"))
            gap = float(np.median(np.log(raw["holdout"])) - np.median(np.log(raw["members"])))
            results.append({"name": entry["name"], "origin": entry["origin"], "parameters": params,
                            "schedule": schedule, "training_steps": steps_done, "training": entry.get("training"),
                            "description": entry.get("description"), "median_log_score_gap": gap,
                            "score_cost": cost, **agg})
            bag, marginal = agg["methods"][BAG], agg["methods"][MARGINAL]
            train_s = (entry.get("training") or {}).get("wall_time_s")
            per = cost.get("per_image_s")
            rows.append([entry["name"], f"{params:,}", schedule, steps_done, f"{gap:.3f}", pct(marginal["tpr_at_1pct"]),
                         pct(bag["tpr_at_1pct"]), num(marginal["auc"]), num(bag["auc"]),
                         seconds(train_s) if train_s else "-",
                         f"{1000 * per:.2f}" if finite(per) else "n/a",
                         seconds(agg["fit_bag_s"]["mean"])])
    section.text(
        f"Every target is attacked with the same score ({score_label(lab.scorer().config)}), the same "
        f"{len(lab.sets['members'])} members, {len(lab.sets['public'])} public and {len(lab.sets['holdout'])} "
        f"holdout images, a bag of {lab.n_models} at alpha = {lab.alpha:g} and {len(seeds)} seeds. "
        + ("Targets given on the command line must have been trained on these members. " if targets else
           f"Trained targets use `train_ddpm` on the members with the demo's recipe (batch 32, lr 1e-3, EMA 0.999, "
           f"no flips, no dropout) for {steps} steps ('linear-long': {2 * steps}). ")
        + "'log-score gap' is the median log-score of holdout minus members (positive: members score lower).")
    section.table(["target", "parameters", "schedule", "training steps", "log-score gap", "marginal TPR@1%FPR",
                   "bag TPR@1%FPR", "marginal AUC", "bag AUC", "training time", "scoring ms/image", "bag fit time"], rows)
    section.notes += notes
    section.results.update(targets=results, train_steps=steps)

    def draw():
        figure, axes = new_figure(1, 1, width=max(5.0, 1.3 * len(results)), height=4.0)
        ax = axes[0, 0]
        x = np.arange(len(results))
        width = 0.38
        for offset, name in ((-width / 2, MARGINAL), (width / 2, BAG)):
            means = [100 * r["methods"][name]["tpr_at_1pct"]["mean"] for r in results]
            sds = [100 * r["methods"][name]["tpr_at_1pct"]["sd"] if finite(r["methods"][name]["tpr_at_1pct"]["sd"])
                   else 0 for r in results]
            ax.bar(x + offset, means, width, yerr=sds, capsize=3, color=COLOURS[name], label=TITLES[name])
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['name']}\n{r['parameters'] / 1e6:.2f}M, {r['training_steps']} steps\n{r['schedule']}"
                            for r in results], fontsize=7)
        ax.set_ylabel("TPR at 1% FPR (%)")
        ax.set_title(f"The attack across targets ({len(lab.sets['members'])} members, ± sd over {len(seeds)} seeds)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        return figure

    section.figure("targets.png", "TPR at 1% FPR of the marginal threshold and the bag on each target.", draw)
    section.summary += [f"{r['name']}: bag {pct(r['methods'][BAG]['tpr_at_1pct'])} marginal "
                        f"{pct(r['methods'][MARGINAL]['tpr_at_1pct'])}" for r in results]
