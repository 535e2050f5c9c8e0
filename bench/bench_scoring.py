"""SecMI scoring throughput of qmia-fast against the plain-PyTorch loop: `qmia-fast bench` plus top-kernel profiles.

    python bench/bench_scoring.py [qmia-fast bench options] [--profile/--no-profile]
                                  [--profile-variants auto,fp16:fused] [--profile-top 15]
    python bench/bench_scoring.py accuracy [--device cuda] [--precisions auto] [--out accuracy.json]

The first form is `qmia-fast bench` (same options, same JSON, rewritten as each case
finishes) with, per case, torch.profiler's top kernels by self time of one batch through
the baseline and through each --profile-variants variant that was timed (on CUDA also that
variant with CUDA graphs off), added to each row as "profile" and printed after the table.
Profiles default on for CUDA and off for a CPU. `accuracy` is `qmia-fast bench --accuracy`
(with --accuracy-max-per-set N: a seeded subset of N images per set, for CPU dry runs).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_profile import format_profiles, profiler_hook  # noqa: E402
from qmia_fast.commands.bench import bench as bench_command, run_bench  # noqa: E402
from qmia_fast.errors import QmiaError  # noqa: E402

PROFILE_OPTIONS = [
    click.Option(["--profile/--no-profile"], default=None,
                 help="Top kernels of one batch per case (default: on for CUDA, off for a CPU)."),
    click.Option(["--profile-variants"], default="auto,fp16:fused", show_default=True,
                 help="Variants to profile besides the baseline (those that were timed)."),
    click.Option(["--profile-top"], type=int, default=15, show_default=True, help="Kernels per profile."),
    click.Option(["--accuracy-max-per-set"], type=int, default=None,
                 help="accuracy: a seeded subset of this many images per set (>= 10; for CPU dry runs)."),
]


def _scoring(profile, profile_variants, profile_top, accuracy_max_per_set, out_path, **values) -> None:
    if profile is None:
        profile = values["device"] == "cuda"
    hook = None
    if profile and not values["accuracy"]:
        hook = profiler_hook([v.strip() for v in profile_variants.split(",") if v.strip()], top=profile_top)
    report, text = run_bench(out_path=out_path, on_case=hook, accuracy_max_per_set=accuracy_max_per_set, **values)
    if hook is not None:  # before the table, so that the end of the output is the table
        click.echo(format_profiles(report) + "\n")
    click.echo(text)
    if out_path:
        click.echo(f"\nwrote {out_path}", err=True)


scoring = click.Command("bench_scoring", params=[*bench_command.params, *PROFILE_OPTIONS], callback=_scoring,
                        help=__doc__.splitlines()[0])


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "accuracy":
        args = ["--accuracy", *args[1:]]
    elif args and args[0] == "scoring":
        args = args[1:]
    try:
        scoring.main(args, standalone_mode=False)
    except QmiaError as exc:  # the CLI's convention: one line, exit 2
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
