"""The printed summary of a report: one row per method, a row of 95% intervals under it, and a legend saying what each column is."""
from __future__ import annotations

import math
import textwrap
from typing import Mapping

# Display titles of the methods the attack reports (attack.BAG, SINGLE, MARGINAL); other names are shown as given.
TITLES = {"qmia_bag": "QMIA-bag", "single_regressor": "single regressor",
          "marginal_threshold": "marginal threshold"}
# The low-FPR columns of the table (keys of a method's operating_points).
TABLE_FPRS = ("1%", "0.1%")
NOT_RESOLVABLE = "n/r"
LEGEND_WIDTH = 100


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _percent(value) -> str:
    return "n/a" if _missing(value) else f"{100 * value:.2f}%"


def _number(value) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"


def _interval(bounds) -> str:
    if not bounds or any(_missing(b) for b in bounds):
        return ""
    low, high = (100 * b for b in bounds)
    digits = 2 if high < 10 else 1
    return f"{low:.{digits}f}-{high:.{digits}f}%"


def _level(value) -> str:
    return f"{100 * value:g}%" if value is not None else "alpha"


def _decision_title(alpha) -> str:
    return f"decision at alpha={_level(alpha)}" if alpha is not None else "fixed decision"


def _decision_cells(entry: Mapping | None) -> tuple[list[str], list[str]]:
    if not entry:
        return ["-", "-"], ["", ""]
    return ([_percent(entry.get("fpr")), _percent(entry.get("tpr"))],
            [_interval(entry.get("fpr_ci")), _interval(entry.get("tpr_ci"))])


def format_summary_table(report: Mapping, legend: bool = True) -> str:
    """A fixed-width table, one row per method: AUC, TPR at 1% and 0.1% FPR, balanced accuracy and, where
    present, the fixed decision's and the oracle threshold's FPR/TPR; under each row its 95% intervals;
    then (legend=True) what each column means."""
    methods = report.get("methods", {})
    has_decision = any(m.get("decision") for m in methods.values())
    has_oracle = any(m.get("oracle") for m in methods.values())
    alpha = report.get("alpha")
    oracle_alpha = next((m["oracle"].get("alpha") for m in methods.values() if m.get("oracle")), None)

    header = ["method", "AUC", *(f"TPR@{key}FPR" for key in TABLE_FPRS), "bal. acc."]
    groups = [("", len(header))]
    if has_decision:
        header += ["FPR", "TPR"]
        groups.append((_decision_title(alpha), 2))
    if has_oracle:
        header += ["FPR", "TPR"]
        groups.append((f"oracle threshold at {_level(oracle_alpha)}", 2))

    rows, not_resolvable = [], False
    for name, method in methods.items():
        points = method.get("operating_points") or {}
        values, intervals = [], []
        for key in TABLE_FPRS:
            point = points.get(key)
            if point is not None and not point.get("resolvable", True):
                values.append(NOT_RESOLVABLE)
                intervals.append("")
                not_resolvable = True
            else:
                values.append(_percent((method.get("tpr_at_fpr") or {}).get(key)))
                intervals.append(_interval(point.get("tpr_ci")) if point else "")
        row = [method.get("title", name), _number(method.get("auc")), *values,
               _percent(method.get("balanced_accuracy"))]
        ci_row = ["  95% CI", "", *intervals, ""]
        for present, key in ((has_decision, "decision"), (has_oracle, "oracle")):
            if present:
                cells, cis = _decision_cells(method.get(key))
                row += cells
                ci_row += cis
        rows.append(row)
        if any(ci_row[1:]):
            rows.append(ci_row)

    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    # Widen each group's columns until its title fits above them.
    column = 0
    for title, span in groups:
        covered = sum(widths[column:column + span]) + 2 * (span - 1)
        if len(title) > covered:
            widths[column + span - 1] += len(title) - covered
        column += span

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = []
    if len(groups) > 1:
        parts, column = [], 0
        for title, span in groups:
            covered = sum(widths[column:column + span]) + 2 * (span - 1)
            parts.append(title.rjust(covered) if title else " " * covered)
            column += span
        lines.append("  ".join(parts).rstrip())
    lines += [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in rows]
    if legend:
        lines += [""] + table_legend(report, has_decision, has_oracle, not_resolvable)
    return "\n".join(lines)


def calibration_legend(calibration: Mapping) -> str:
    """One legend entry: whether the decision is conformally calibrated, on how many images, under which assumption."""
    if calibration.get("method") == "conformal":
        bag = calibration.get("bag") or {}
        return (f"calibration: split conformal on {calibration.get('n_calibration')} public images held out of all "
                f"fitting ({calibration.get('n_training')} trained the regressors): the thresholds are shifted by the "
                f"{bag.get('rank')}-th smallest calibration residual, so a non-member is called a member with "
                f"probability at most {bag.get('rank')}/{(calibration.get('n_calibration') or 0) + 1} <= alpha "
                "(over the calibration draw; one run's observed FPR varies around it), assuming "
                f"{calibration.get('assumption')}.")
    if calibration.get("requested") == "conformal":
        return f"calibration: none ({calibration.get('warning')})."
    return "calibration: none (--calibration none, the paper's raw rule); the decision's FPR is only about alpha."


def table_legend(report: Mapping, has_decision: bool, has_oracle: bool, not_resolvable: bool) -> list[str]:
    """What each column of the summary table is, in lines of at most LEGEND_WIDTH characters."""
    n_pos, n_neg = report.get("n_members"), report.get("n_nonmembers")
    alpha = report.get("alpha")
    entries = [
        "AUC: area under the exact ROC (one point per distinct score).",
        "TPR@x%FPR: share of members above the strictest threshold whose FPR on the evaluated non-members is "
        "at most x% (exact ROC, no interpolation)"
        + (f"; {NOT_RESOLVABLE}: x% is below 1/{n_neg} (one false positive), so these {n_neg} non-members "
           "cannot resolve it." if not_resolvable else "."),
        "bal. acc.: best-threshold balanced accuracy, the maximum over thresholds of (TPR + 1 - FPR) / 2.",
    ]
    if has_decision:
        entries.append(f"{_decision_title(alpha)}: each method's fixed rule at level alpha, set on the public set "
                       "only (QMIA-bag: member iff most of the bag put log s(x) below their alpha-quantile for x; "
                       "marginal threshold: below the public set's alpha-quantile), with its observed FPR and TPR "
                       "on the evaluated images.")
        calibration = (report.get("fit") or {}).get("calibration")
        if calibration:  # an audit's report (evaluate's has no fit)
            entries.append(calibration_legend(calibration))
    if has_oracle:
        entries.append("oracle threshold: the one score threshold that these same non-members allow at that FPR "
                       "(the TPR@FPR point); optimistic, as an attacker cannot set it without the labels.")
    entries.append(f"95% CI: Clopper-Pearson interval of the rate above it ({n_pos} members, {n_neg} non-members); "
                   "the TP and FP counts are in report.json.")
    out = []
    for entry in entries:
        out += textwrap.wrap(entry, LEGEND_WIDTH, subsequent_indent="  ")
    return out
