"""`qmia-fast experiment`: the paper's ablations and open checks on any target, each a small module run by one Lab."""
from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError
from ..pipeline.outputs import spec_inputs
from ..pipeline.specs import AuditSpec
from . import alpha, bag_size, defence, mismatch, oracle, targets, timestep
from .budget import BUDGETS, FULL, QUICK, TINY, Budget
from .defended import defended_model
from .folder import ExperimentFolder
from .lab import Lab
from .writing import Section, write_outputs

# name -> module, in the order `all` runs and the report shows them.
EXPERIMENTS = {m.NAME: m for m in (alpha, bag_size, timestep, mismatch, defence, targets, oracle)}
ALL = "all"
DEFAULT_ROOT = "experiments"

__all__ = ["EXPERIMENTS", "ALL", "run_experiments", "defended_model", "Budget", "FULL", "QUICK", "TINY", "BUDGETS",
           "Lab", "Section"]


def resolve_names(name: str) -> list[str]:
    if name == ALL:
        return list(EXPERIMENTS)
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment {name!r} is unknown; choose one of {', '.join(EXPERIMENTS)} or {ALL}")
    return [name]


def run_experiments(name: str, spec: AuditSpec | None = None, out: str | Path | None = None, *,
                    budget: Budget = FULL, targets_given: Sequence[str] = (), variants: Sequence[str] | None = None,
                    train_steps: int | None = None, overwrite: bool = False, progress: bool = False,
                    command: str | None = None, log: Callable[[str], None] | None = None) -> list[Section]:
    """Run experiment `name` (or all) on `spec`'s target and data; write report.md, results.json and figures to `out`.

    Scores and fits are cached under out/cache, keyed by everything that decides them and sealed
    with their hashes, so a rerun, or a sweep that shares a score setting with an earlier one,
    only computes what is missing. Earlier results in `out` are replaced only with
    overwrite=True (the cache is kept; see ExperimentFolder). Returns the finished sections.
    """
    names = resolve_names(name)
    spec = spec or AuditSpec()
    out = Path(out if out is not None else Path(DEFAULT_ROOT) / name)
    if variants is not None:
        variants = targets.check_variants(tuple(variants))
    if train_steps is not None and (isinstance(train_steps, bool) or not isinstance(train_steps, int)
                                    or train_steps < 1):
        raise ConfigError(f"train_steps = {train_steps!r} must be a positive integer")
    command = command or f"qmia-fast experiment {name}"
    folder = ExperimentFolder(out, overwrite, command)
    folder.check(spec_inputs(spec.model, spec.data, spec.config_file,
                             [(path, "--targets model") for path in targets_given]))
    folder.claim()
    try:
        return _run(names, spec, out, budget, targets_given, variants, train_steps, progress, command, log)
    finally:
        folder.release()


def _run(names, spec, out, budget, targets_given, variants, train_steps, progress, command, log):
    log = log or (lambda text: None)
    lab = Lab(spec, out, budget, log=log, progress=progress)
    started = datetime.datetime.now(datetime.timezone.utc)
    setup = {**lab.describe(), "budget": budget.name}
    sections: list[Section] = []
    for experiment in names:
        module = EXPERIMENTS[experiment]
        section = Section(experiment, module.TITLE, out)
        log(f"experiment {experiment}: {module.TITLE}")
        t0 = time.perf_counter()
        if module is targets:
            module.run(lab, section, tuple(targets_given), variants, train_steps)
        else:
            module.run(lab, section)
        section.seconds = time.perf_counter() - t0
        sections.append(section)
        write_outputs(out, sections, setup, command, started, finished=experiment == names[-1])
    return sections
