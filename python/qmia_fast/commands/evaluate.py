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
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace a finished report (an audit's or evaluate's) in --out.")
def evaluate(inputs, higher_is_member, alpha, out_dir, plots, overwrite):
    """Exact ROC metrics of scores against labels (1 = member).

    INPUTS: scores.npz (from `qmia-fast score --split ...`: scores, labels and their direction;
    or an audit's scores.npz with its membership_* arrays), a .csv (score,label columns, with
    the NAME.csv.json `qmia-fast score` writes beside it; or an audit's scores.csv, every
    method), pairs.npy (N x 2), or scores.npy labels.npy.
    """
    from ..pipeline.outputs import AUDIT_FILES, AuditFolder
    from ..results import report as reporting
    from ..results.score_files import read_score_table

    started = time.perf_counter()
    folder = None
    if out_dir is not None:
        # Checked before anything is read: never an input among the outputs, never a finished run replaced unasked.
        folder = AuditFolder(out_dir, overwrite, files=[name for name in AUDIT_FILES if name != "attack.pt"],
                             what="report")
        folder.check([(path, "input") for path in inputs])
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
    if folder is not None:
        arrays = reporting.score_arrays(results, table.labels, **table.score_array_options(direction))
        try:
            folder.begin()
            files, note = reporting.write_artifacts(folder.path, built, arrays, plots=plots)
            files.append(folder.finish(built, files, note))
        finally:
            folder.release()
        click.echo(f"wrote {', '.join(str(p) for p in files)}")
        if note:
            echo_err(note)
