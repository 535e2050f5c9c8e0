"""`qmia-fast bench`: SecMI scoring throughput against a plain-PyTorch baseline, measured in one run (JSON + table)."""
from __future__ import annotations

import click

from ..errors import ConfigError


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


def parse_variants(text: str | None) -> list[str] | None:
    """'auto,fp16:fused,tf32' -> the list, each checked (benchmark.parse_variant); None: the device's defaults."""
    from ..benchmark import parse_variant

    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--precisions {text!r}: name at least one precision, e.g. auto,fp32")
    try:
        for value in values:
            parse_variant(value)
    except ConfigError as exc:
        raise ConfigError(f"--precisions: {exc}") from None
    return values


def build_options(*, models: str, batch_sizes: str | None, precisions: str | None, device: str,
                  threads: int | None, rounds: int | None, batches_per_job: int | None, quick: bool, direct: bool,
                  slow_bf16: bool, vote: bool, matmul: bool):
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
    options.precisions = parse_variants(precisions)
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
    options.vote, options.matmul = vote, matmul
    return options


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
