"""`qmia-fast bench`: scoring throughput against a plain-PyTorch SecMI loop (scoring_rows), the models and baselines it times (models), clocks and rates (timing), the precision accuracy check (accuracy), tables (tables)."""
from __future__ import annotations

from .accuracy import ACCURACY_VARIANTS, accuracy_check, spearman
from .models import (
    MODEL_NAMES, TORCH_DEFAULT_TF32, SecmiBaseline, build_model, cuda_tf32, reference_unet, unet_flops_per_image,
)
from .scoring_rows import (
    DEFAULT_VARIANTS, FUSED_SUFFIXES, BenchOptions, bench_vote, parse_variant, planned_runs_as, run, scoring_rows, scoring_variants,
)
from .tables import format_accuracy, format_table
from .timing import ROUNDING_RMS, best_wall, environment, matmul_rates, peak_fraction, rms_per_pixel

__all__ = ["ACCURACY_VARIANTS", "accuracy_check", "spearman", "MODEL_NAMES", "TORCH_DEFAULT_TF32", "SecmiBaseline",
           "build_model", "cuda_tf32", "reference_unet", "unet_flops_per_image", "DEFAULT_VARIANTS", "FUSED_SUFFIXES",
           "BenchOptions", "bench_vote", "parse_variant", "planned_runs_as", "run", "scoring_rows", "scoring_variants", "format_accuracy",
           "format_table", "ROUNDING_RMS", "best_wall", "environment", "matmul_rates", "peak_fraction",
           "rms_per_pixel"]
