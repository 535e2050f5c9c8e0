"""The audit pipeline under both the CLI and the API: specs in, runs that own resuming, sharding and reports."""
from __future__ import annotations

from .audit import AuditResult, fit_and_predict, prepare, run_audit, score_sets
from .outputs import AuditFolder, verify_audit_folder
from .score_job import ScoreResult, run_score, select_indices
from .specs import (
    DEFAULT_AUDIT_OUT, SUBSETS, AttackSpec, AuditSpec, DataSpec, ModelSpec, ScoreJob, ScoreSpec,
)

__all__ = [
    "AuditSpec", "ScoreJob", "ModelSpec", "DataSpec", "ScoreSpec", "AttackSpec", "run_audit", "run_score",
    "AuditResult", "ScoreResult", "prepare", "score_sets", "fit_and_predict", "select_indices", "AuditFolder",
    "verify_audit_folder", "DEFAULT_AUDIT_OUT", "SUBSETS",
]
