"""`qmia-fast bench`'s option values (model lists, batch sizes, variants) checked and turned into BenchOptions."""
from __future__ import annotations

from ..errors import ConfigError
from .models import MODEL_NAMES
from .scoring_rows import BenchOptions, parse_variant


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
