"""qmia-fast: quantile-regression membership inference on diffusion models, with a fused C++/CUDA scoring core."""
from __future__ import annotations

import os as _os
import sys as _sys

from .errors import QmiaError

__version__ = "0.1.0"

# Before torch loads (where it has not yet): OpenMP threads that sleep while they wait, unless the
# user chose a wait policy. On a machine shared with other work, OpenMP's default spin-waiting lets
# each waiting thread burn a core that a descheduled sibling needs (README "Speed" has the
# measurements); on an idle machine sleeping costs nothing measurable. Set here, not in the CLI,
# so that the Python API runs as `qmia-fast` does. The thread count stays torch's.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Public names load lazily: importing the package must not pull in the model zoo,
# the compiled core or optional extras until they are used.
_LAZY = {
    "load_model": ("qmia_fast.models", "load_model"),
    "wrap_denoiser": ("qmia_fast.models", "wrap_denoiser"),
    "load_data": ("qmia_fast.data", "load_data"),
    "score": ("qmia_fast.scoring", "score"),
    "Scorer": ("qmia_fast.scoring", "Scorer"),
    "QuantileAttack": ("qmia_fast.attack", "QuantileAttack"),
    "run_audit": ("qmia_fast.pipeline", "run_audit"),
    "run_score": ("qmia_fast.pipeline", "run_score"),
    "AuditSpec": ("qmia_fast.pipeline", "AuditSpec"),
    "ScoreJob": ("qmia_fast.pipeline", "ScoreJob"),
    "ModelSpec": ("qmia_fast.pipeline", "ModelSpec"),
    "DataSpec": ("qmia_fast.pipeline", "DataSpec"),
    "ScoreSpec": ("qmia_fast.pipeline", "ScoreSpec"),
    "AttackSpec": ("qmia_fast.pipeline", "AttackSpec"),
    "metrics": ("qmia_fast.metrics", None),
    "kernels": ("qmia_fast.kernels", None),
    "schedule": ("qmia_fast.schedule", None),
}

__all__ = ["QmiaError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qmia_fast' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
