"""`qmia-fast info`: versions, how the compiled core was built, threads, GPUs and CPU features."""
from __future__ import annotations

import json

import click

from ..info_text import format_info, plan_lines


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the build information as JSON.")
@click.option("--clear-plans", is_flag=True,
              help="Forget the run plans measured on this machine; the next run of each model measures again.")
def info(as_json: bool, clear_plans: bool) -> None:
    """Show versions, build flags, CUDA architectures, threads, CPU features (AMX/bf16) and the measured run plans."""
    from .. import plan_probe
    from ..build_info import build_info

    if clear_plans:
        path = plan_probe.clear()
        click.echo(f"cleared the measured run plans ({path})")
        return
    data = build_info()
    if as_json:
        data["run_plans"] = {"cache": str(plan_probe.cache_path()), "entries": plan_probe.cached_entries()}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in format_info(data) + plan_lines():
            click.echo(line)
