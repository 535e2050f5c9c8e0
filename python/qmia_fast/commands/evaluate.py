"""`qmia-fast evaluate`: metrics, report.json, exports and plots from scores and labels in npz/npy/csv files."""
from __future__ import annotations

import time

import click

from .common import echo_err


@click.command("evaluate")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--higher-is-member/--lower-is-member", "higher_is_member", default=None,
              help="Direction of the scores. Needed only for files that do not record it (bare .npy, a plain "
                   "CSV or npz): raw t-errors and losses, as `qmia-fast score` writes them, are lower = member. "
                   "Files written by qmia-fast record it, and a contradicting option is refused.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Also report, per score, the oracle threshold at this FPR: the threshold chosen on these "
                   "same non-members (optimistic; not a decision an attacker could set).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.json, scores.npz, scores.csv, leakpro.json and the plots here (default: print only).")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw the plots (needs matplotlib).")
def evaluate(inputs, higher_is_member, alpha, out_dir, plots):
    """Exact ROC metrics of scores against labels (1 = member).

    INPUTS: scores.npz (from `qmia-fast score --split ...`: scores, labels and their direction;
    or an audit's scores.npz with its membership_* arrays), a .csv (score,label columns, after
    the metadata line `qmia-fast score` writes; or an audit's scores.csv), pairs.npy (N x 2),
    or scores.npy labels.npy.
    """
    from ..results import report as reporting
    from ..results.score_files import read_score_table

    started = time.perf_counter()
    direction = None if higher_is_member is None else ("higher_is_member" if higher_is_member else "lower_is_member")
    table = read_score_table(inputs)
    scores = table.membership_scores(direction)
    results = {name: (values, table.decisions.get(name)) for name, values in scores.items()}
    config = {"inputs": list(table.sources), "direction": table.resolved_direction(direction),
              "source_metadata": table.metadata}
    built = reporting.build_report(results, table.labels, config=config, alpha=table.metadata.get("alpha"),
                                   oracle_alpha=alpha, timings={"evaluate_s": time.perf_counter() - started})
    click.echo(reporting.format_summary_table(built))
    for warning in built["warnings"]:
        echo_err(f"warning: {warning}")
    if out_dir is not None:
        arrays = reporting.score_arrays(results, table.labels, **table.score_array_options(direction))
        written = reporting.write_report(out_dir, built, arrays, plots=plots)
        click.echo(f"wrote {', '.join(str(p) for p in written['files'])}")
        if written["note"]:
            echo_err(written["note"])
