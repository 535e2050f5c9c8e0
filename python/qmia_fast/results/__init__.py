"""What a run hands its user: report.json and its schema, scores.npz/csv, plots, the summary table, LeakPro export, score files."""
from __future__ import annotations

from .report import (
    REPORT_FORMAT, REPORT_VERSION, build_report, json_safe, report_from_attack, validate_report, versions,
    write_artifacts, write_report, write_report_json,
)
from .summary_table import format_summary_table

__all__ = ["REPORT_FORMAT", "REPORT_VERSION", "build_report", "report_from_attack", "validate_report", "versions",
           "json_safe", "write_artifacts", "write_report", "write_report_json", "format_summary_table"]
