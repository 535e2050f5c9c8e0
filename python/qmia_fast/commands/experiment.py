"""`qmia-fast experiment NAME`: the paper's ablations (alpha, bag size, timestep, mismatch, defence, targets, oracle) on any target."""
from __future__ import annotations

import shlex
import time

import click
from click.core import ParameterSource

from ..pipeline import AuditSpec
from .common import (
    attack_options, attack_spec, config_option, data_options, data_spec, echo_err, model_options, model_spec,
    score_spec, scoring_options,
)

# Kept in step with qmia_fast.experiments.EXPERIMENTS (checked by the tests); listed here so that --help
# does not import torch.
NAMES = ("alpha", "bag-size", "timestep", "mismatch", "defence", "targets", "oracle", "all")


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@click.command("experiment")
@click.argument("name", type=click.Choice(NAMES))
@config_option
@model_options
@data_options
@scoring_options
@attack_options
@click.option("--out", "out_dir", default=None, help="Output folder [default: experiments/NAME]: report.md, "
              "results.json, the figures, and cache/ (scores and fits, reused by later runs).")
@click.option("--quick", is_flag=True, default=False,
              help="Smaller grids, at most 400 images per set and 2 seeds: `all --quick` takes minutes, not hours.")
@click.option("--budget", type=click.Choice(["full", "quick", "tiny"]), default=None, hidden=True,
              help="Grid sizes by name (tiny: for tests).")
@click.option("--seeds", default=None, type=click.IntRange(min=1),
              help="Bag seeds per setting [default: 5 for alpha, bag-size and oracle, 3 for the sweeps; 2 with --quick].")
@click.option("--targets", "targets_given", default=None,
              help="targets: comma-separated model paths (trained on the same members) to attack beside --model; "
                   "without it, targets are trained here with train_ddpm (see --variants).")
@click.option("--variants", default=None,
              help="targets: which to train, comma-separated from linear, linear-long, cosine, small "
                   "[default: all four; linear with --quick].")
@click.option("--train-steps", default=None, type=click.IntRange(min=1),
              help="targets: training steps of the trained variants [default: 800; 20 with --quick].")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace an earlier experiment's report, results and figures in --out (the cache is kept: "
                   "its entries are keyed by everything that decides them; trained targets are kept and resumed).")
def experiment(**options):
    """Run an experiment NAME (or all) on the target and data; with no options, the shipped demo.

    \b
    alpha      decision level: observed vs target FPR, conformal vs raw rule, TPR, vs marginal threshold
    bag-size   ensemble size and kind (bootstrap / full data), width, selected regressor: TPR, spread, time
    timestep   SecMI t_sec, loss t and PIA t swept: power and scoring cost per image
    mismatch   the public set partly or wholly from shifted data: FPR drift and TPR loss
    defence    Gaussian noise on the target's eps output: attack power vs denoising loss
    targets    the attack across targets (given, or trained at a few sizes/lengths/schedules)
    oracle     synthetic data with known quantiles: selected and paper thresholds vs the best possible

    Scores are cached per score setting in the output folder, so attack sweeps cost only
    regressor fits and a killed run resumes.
    """
    from ..experiments import BUDGETS, run_experiments

    ctx = click.get_current_context()
    command = _command_line(ctx)
    name = options.pop("name")
    budget = BUDGETS[options.pop("budget") or ("quick" if options.pop("quick") else "full")]
    options.pop("quick", None)
    budget = budget.with_seeds(options.pop("seeds"))
    spec = AuditSpec(model=model_spec(options), data=data_spec(options), score=score_spec(options),
                     attack=attack_spec(options), seed=options.pop("seed"), out=None,
                     config_file=options.pop("config"))
    variants = options.pop("variants")
    started = time.perf_counter()
    sections = run_experiments(
        name, spec, options.pop("out_dir"), budget=budget, targets_given=_names(options.pop("targets_given")),
        variants=_names(variants) if variants is not None else None, train_steps=options.pop("train_steps"),
        overwrite=options.pop("overwrite"), progress=options.pop("progress"), command=command, log=echo_err)
    for section in sections:
        click.echo(f"\n{section.title} ({section.seconds:.0f} s)")
        for line in section.summary:
            click.echo(f"  {line}")
        for note in section.notes:
            click.echo(f"  note: {note}")
    out = sections[0].out if sections else None
    figures = sum(len(s.figures) for s in sections)
    click.echo(f"\nwrote report.md, results.json and {figures} figure(s) to {out}/ in {time.perf_counter() - started:.0f} s")


def _command_line(ctx: click.Context) -> str:
    """The command as typed (arguments and the options given on the command line or in --config), for the report."""
    parts = ["qmia-fast", ctx.info_name]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        value = ctx.params.get(param.name)
        if source in (ParameterSource.DEFAULT, None) or value is None:
            continue
        if isinstance(param, click.Argument):
            parts.append(shlex.quote(str(value)))
        elif getattr(param, "is_flag", False):
            if param.secondary_opts and not value:
                parts.append(param.secondary_opts[0])
            elif value:
                parts.append(param.opts[0])
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)
