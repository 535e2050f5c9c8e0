"""`qmia-fast bench`: the scoring throughput benchmark (bench/bench_scoring.py's machinery) from the command line."""
from __future__ import annotations

import click


@click.command("bench")
@click.option("--quick", is_flag=True, default=False, help="Small sizes that finish in a few minutes.")
def bench(quick: bool) -> None:
    """Measure SecMI scoring throughput against a plain-PyTorch baseline in the same run (JSON + table)."""
    raise click.ClickException("the benchmark is being written (issue 6); run bench/bench_scoring.py meanwhile")
