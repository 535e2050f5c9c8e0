"""`qmia-fast bench`: SecMI scoring throughput against a plain-PyTorch baseline, measured in one run (JSON + table)."""
from __future__ import annotations

import click

from ..benchmark.options import build_options


def run_bench(*, accuracy: bool, accuracy_method: str, out_path: str | None, on_case=None,
              accuracy_max_per_set: int | None = None, **values) -> tuple[dict, str]:
    """(report, table) of a `qmia-fast bench` run; with out_path the JSON is rewritten atomically as parts finish.

    on_case: see benchmark.scoring_rows; it and accuracy_max_per_set are for bench/bench_scoring.py
    (kernel profiles, quick CPU dry runs of the accuracy check).
    """
    from .. import benchmark
    from ..atomic_io import write_json

    def log(text: str) -> None:
        click.echo(text, err=True)

    def save(report: dict) -> None:
        if out_path:
            write_json(out_path, report)

    options = build_options(**values)
    if accuracy:
        import torch

        if options.threads is not None:
            torch.set_num_threads(options.threads)
        device_type = torch.device(options.device).type
        variants = [p for p in (options.precisions or benchmark.ACCURACY_VARIANTS.get(device_type, ("auto",)))
                    if p != "fp32"] or ["auto"]
        report = benchmark.accuracy_check(variants, device=options.device, method=accuracy_method, log=log,
                                          max_per_set=accuracy_max_per_set, on_update=save)
        return report, benchmark.format_accuracy(report)
    report = benchmark.run(options, log=log, on_update=save, on_case=on_case)
    return report, benchmark.format_table(report)


@click.command("bench")
@click.option("--models", default="demo,cifar10", show_default=True,
              help="Models to time: demo (the shipped, trained target), cifar10 (the 35.7M-parameter CIFAR-10 "
                   "DDPM architecture, random weights), latent (an SD-shaped latent UNet behind a VAE, 64x64 images) "
                   "and dit (a class-conditional DiT behind the same VAE), the last two against a plain-diffusers "
                   "loop (needs the diffusers extra).")
@click.option("--batch-sizes", default=None,
              help="Batch sizes: '16,64' for every model or 'demo=16,64;cifar10=16'. "
                   "Default: demo 16..1024, cifar10 16,32, latent and dit 16 (with --quick: demo 32, cifar10 16, "
                   "latent and dit 8).")
@click.option("--precisions", default=None,
              help="qmia-fast variants to time beside the baseline: precisions, each optionally with :fused or "
                   ":unfused (the fused GroupNorm path forced on or off). Default: auto,fp32,bf16 on a CPU; "
                   "auto,fp16:fused,fp16:unfused,tf32,mixed,mixed-tf32,fp32,bf16 on CUDA.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads for the whole run (default: torch's). On a shared machine use 1.")
@click.option("--rounds", type=int, default=None, help="Timed rounds per case (default 3; 2 with --quick).")
@click.option("--batches-per-job", type=int, default=None,
              help="Batches per timed job (default 1 on a CPU, 4 on a GPU).")
@click.option("--quick", is_flag=True, default=False, help="Small sizes that finish in a few minutes.")
@click.option("--direct/--no-direct", default=True, show_default=True,
              help="Also time fp32 without the Winograd/GroupNorm CPU layers (CPU only).")
@click.option("--slow-bf16", is_flag=True, default=False,
              help="Time bf16 on the CIFAR-10 model even where the CPU emulates bf16 (very slow).")
@click.option("--vote/--no-vote", default=True, show_default=True, help="Time the vote kernel against numpy.")
@click.option("--matmul/--no-matmul", default=True, show_default=True,
              help="Measure this device's matrix-multiply rates (fp32, bf16; on CUDA also tf32 and fp16).")
@click.option("--accuracy", is_flag=True, default=False,
              help="Instead: run the demo attack on strict fp32 scores and on each --precisions' scores and compare "
                   "AUC and TPR at 1% FPR (default: auto and bf16 on a CPU, auto on CUDA).")
@click.option("--accuracy-method", default="recommended", show_default=True,
              type=click.Choice(["recommended", "secmi", "loss", "pia"]),
              help="Score used by --accuracy: the demo target's recommended one (what `qmia-fast attack` uses) "
                   "or a method with its defaults.")
@click.option("--out", "out_path", default=None,
              help="Write the JSON report here (rewritten as each part finishes; 'complete' says whether all ran).")
def bench(out_path, **values):
    """Measure SecMI scoring throughput against a plain-PyTorch baseline in the same run (JSON + table).

    Nothing is asserted: the table reports images per second (wall and process CPU time),
    the ratio to the baseline measured round by round (on CUDA also to the same loop with
    TF32 off), the UNet FLOP rate and its share of this machine's matrix-multiply rate.
    """
    report, text = run_bench(out_path=out_path, **values)
    click.echo(text)
    if out_path:
        click.echo(f"\nwrote {out_path}", err=True)
