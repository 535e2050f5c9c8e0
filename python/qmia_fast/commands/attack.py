"""`qmia-fast attack`: the whole audit (score members, public and holdout; fit the bag; vote; report)."""
from __future__ import annotations

import click

from ..pipeline import DEFAULT_AUDIT_OUT, AuditSpec, run_audit
from .common import (
    attack_options, attack_spec, config_option, data_options, data_spec, echo_err, model_options, model_spec,
    resumable_options, score_spec, scoring_options,
)


@click.command("attack")
@config_option
@model_options
@data_options
@scoring_options
@attack_options
@click.option("--out", "out_dir", default=DEFAULT_AUDIT_OUT, show_default=True,
              help="Output folder: report.json, scores.npz, scores.csv, attack.pt and the plots.")
@resumable_options("Replace a finished audit in --out, or partial scores left there by a run with other settings "
                   "(partial scores of the same run are kept).")
def attack(**options):
    """Run the membership audit end to end. With no options: the shipped demo.

    Scores the members, the public non-members and the holdout non-members with the target
    model; fits a bag of quantile regressors of log(score) on the public set; calls an
    image a member iff most of the bag put its log-score below their alpha-quantile; and
    reports the attack against the holdout, beside a single regressor and a marginal
    threshold. A killed run resumes its scoring when the same command is run again.
    """
    spec = AuditSpec(model=model_spec(options), data=data_spec(options), score=score_spec(options),
                     attack=attack_spec(options), seed=options.pop("seed"), out=options.pop("out_dir"),
                     chunk_size=options.pop("chunk_size"), overwrite=options.pop("overwrite"),
                     progress=options.pop("progress"), config_file=options.pop("config"))
    result = run_audit(spec, log=echo_err)
    if result is None:  # a torchrun rank other than 0
        return
    if result.note:
        echo_err(result.note)
    click.echo(result.table)
    timings = result.report["timings_s"]
    click.echo(f"\nwrote {', '.join(p.name for p in result.files)} to {result.out}/ in {timings['total_s']:.0f} s "
               f"(scoring {timings['score_s']:.0f} s, fitting and prediction {timings['fit_predict_s']:.0f} s)")
