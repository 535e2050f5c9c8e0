"""`qmia-fast bench`: SecMI scoring throughput against a SecMI-style plain-PyTorch baseline, measured in one run (JSON + table)."""
from __future__ import annotations

import click

from ..errors import ConfigError
from ..precision import PRECISIONS


def parse_batch_sizes(text: str | None, models) -> dict | None:
    """'16,64' (every model) or 'demo=16,64;cifar10=16' -> {model: [sizes]}; None keeps the defaults."""
    if text is None:
        return None
    text = text.strip()
    try:
        if "=" not in text:
            sizes = [int(v) for v in text.split(",") if v.strip()]
            parsed = {model: sizes for model in models}
        else:
            parsed = {}
            for part in text.split(";"):
                if not part.strip():
                    continue
                model, values = part.split("=", 1)
                parsed[model.strip()] = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes {text!r} is not understood; write 16,64 or demo=16,64;cifar10=16") from None
    if any(size < 1 for sizes in parsed.values() for size in sizes):
        raise ConfigError(f"--batch-sizes {text!r}: batch sizes must be positive")
    return parsed


def parse_list(text: str, allowed, name: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ConfigError(f"--{name} {text!r}: use a comma-separated list of {', '.join(allowed)}")
    return values


def build_options(*, models: str, batch_sizes: str | None, precisions: str, device: str, threads: int | None,
                  rounds: int | None, batches_per_job: int | None, quick: bool, direct: bool, slow_bf16: bool,
                  vote: bool, bag: bool, matmul: bool):
    """BenchOptions from command-line values (shared by `qmia-fast bench` and bench/bench_scoring.py)."""
    from ..benchmark import MODEL_NAMES, BenchOptions

    model_list = parse_list(models, MODEL_NAMES, "models")
    options = BenchOptions.quick_defaults() if quick else BenchOptions()
    options.models = model_list
    sizes = parse_batch_sizes(batch_sizes, model_list)
    if sizes is not None:
        unknown = sorted(set(sizes) - set(MODEL_NAMES))
        if unknown:
            raise ConfigError(f"--batch-sizes names unknown model(s) {', '.join(unknown)}; "
                              f"use {', '.join(MODEL_NAMES)}")
        options.batch_sizes = {**options.batch_sizes, **sizes}
    options.precisions = parse_list(precisions, PRECISIONS, "precisions")
    options.device = device
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} must be at least 1")
    options.threads = threads
    if rounds is not None:
        if rounds < 1:
            raise ConfigError(f"--rounds {rounds} must be at least 1")
        options.rounds = rounds
    if batches_per_job is not None and batches_per_job < 1:
        raise ConfigError(f"--batches-per-job {batches_per_job} must be at least 1")
    options.batches_per_job = batches_per_job
    options.direct_layers = direct
    options.slow_bf16 = slow_bf16
    options.vote, options.bag, options.matmul = vote, bag, matmul
    return options


@click.command("bench")
@click.option("--models", default="demo,cifar10", show_default=True,
              help="Models to time: demo (the shipped target, or its architecture with random weights until it is "
                   "trained) and cifar10 (the 35.7M-parameter CIFAR-10 DDPM architecture, random weights).")
@click.option("--batch-sizes", default=None,
              help="Batch sizes: '16,64' for every model or 'demo=16,64;cifar10=16'. "
                   "Default: demo 16..1024 and cifar10 16,32 (with --quick: demo 32 and cifar10 16).")
@click.option("--precisions", default="auto,fp32,bf16", show_default=True,
              help="qmia-fast precisions to time beside the fp32 baseline.")
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
@click.option("--bag/--no-bag", default=True, show_default=True,
              help="Time quantile-bag training, batched against one regressor at a time.")
@click.option("--matmul/--no-matmul", default=True, show_default=True,
              help="Measure this device's fp32 and bf16 matrix-multiply rates.")
@click.option("--accuracy", is_flag=True, default=False,
              help="Instead: run the demo attack on fp32 scores and on each --precisions' scores and compare "
                   "AUC and TPR at 1%% FPR (needs the trained demo target).")
@click.option("--accuracy-method", default="recommended", show_default=True,
              type=click.Choice(["recommended", "secmi", "loss", "pia"]),
              help="Score used by --accuracy: the demo target's recommended one (what `qmia-fast attack` uses) "
                   "or a method with its defaults.")
@click.option("--out", "out_path", default=None, help="Write the JSON report here.")
def bench(models, batch_sizes, precisions, device, threads, rounds, batches_per_job, quick, direct, slow_bf16, vote,
          bag, matmul, accuracy, accuracy_method, out_path):
    """Measure SecMI scoring throughput against a plain-PyTorch baseline in the same run (JSON + table).

    Nothing is asserted: the table reports images per second (wall and process CPU time),
    the ratio to the baseline measured round by round, the UNet FLOP rate and this
    machine's matrix-multiply rates.
    """
    from .. import benchmark
    from ..atomic_io import write_json

    def log(text: str) -> None:
        click.echo(text, err=True)

    options = build_options(models=models, batch_sizes=batch_sizes, precisions=precisions, device=device,
                            threads=threads, rounds=rounds, batches_per_job=batches_per_job, quick=quick,
                            direct=direct, slow_bf16=slow_bf16, vote=vote, bag=bag, matmul=matmul)
    if accuracy:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        report = benchmark.accuracy_check([p for p in options.precisions if p != "fp32"] or ["auto"],
                                          device=device, method=accuracy_method, log=log)
        text = benchmark.format_accuracy(report)
    else:
        report = benchmark.run(options, log=log)
        text = benchmark.format_table(report)
    if out_path:
        write_json(out_path, report)
    click.echo(text)
    if out_path:
        click.echo(f"\nwrote {out_path}", err=True)
