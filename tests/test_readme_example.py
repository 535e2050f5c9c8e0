"""README's "Python API" example, run as written: its step-by-step recipe and qf.run_audit give the same raw scores,
membership scores and metrics, bit for bit (on 30 images per set of the demo, so that the test stays quick)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

import qmia_fast
import qmia_fast.data
from qmia_fast.data import LoadedData, Split
from qmia_fast.pipeline.audit import subsample

README = Path(__file__).resolve().parents[1] / "README.md"
PER_SET = 30


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


@pytest.fixture
def reduced_demo(monkeypatch):
    """load_data with the demo's split cut to PER_SET images per set, for the recipe and the pipeline alike."""
    real = qmia_fast.data.load_data

    def load_data(*args, **kwargs):
        loaded = real(*args, **kwargs)
        split = loaded.split
        smaller = Split(*(subsample(getattr(split, name), PER_SET, 0, name) for name in ("members", "public",
                                                                                          "holdout")),
                        source=split.source, n_images=split.n_images)
        return LoadedData(loaded.images, smaller, description=loaded.description, labels=loaded.labels,
                          format=loaded.format, files=loaded.files)

    monkeypatch.setattr(qmia_fast.data, "load_data", load_data)
    monkeypatch.setattr(qmia_fast, "load_data", load_data, raising=False)


def test_the_readme_recipe_and_run_audit_agree(reduced_demo):
    code = readme_example()
    assert "indices=idx" in code and "qf.run_audit(qf.AuditSpec(" in code
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README) + ":Python API", "exec"), namespace)  # noqa: S102 - our own README
    audit, result, labels, test = (namespace[name] for name in ("audit", "result", "labels", "test"))
    split, images, score = namespace["split"], namespace["images"], namespace["score"]
    assert len(split.members) == len(split.public) == len(split.holdout) == PER_SET

    # Same images in the same order, the same raw scores (noise keyed by each image's global index) ...
    np.testing.assert_array_equal(test, audit.indices)
    np.testing.assert_array_equal(labels, audit.labels)
    np.testing.assert_array_equal(score(split.holdout), audit.raw_scores["holdout"])
    # ... hence the same bag, membership scores, votes and decisions, and the same metrics.
    np.testing.assert_array_equal(result.score, audit.result.score)
    np.testing.assert_array_equal(result.votes, audit.result.votes)
    np.testing.assert_array_equal(result.decision, audit.result.decision)
    bag = audit.report["methods"]["qmia_bag"]
    assert bag["auc"] == qmia_fast.metrics.auc(result.score, labels)
    assert f"{bag['auc']:.4f}" in audit.table
    first_line = printed.getvalue().splitlines()[0]
    assert float(first_line.split()[0]) == bag["auc"]

    # Scoring the same images without their indices keys the noise from 0 and gives other numbers:
    # the mistake the example used to make.
    scorer = namespace["scorer"]
    assert not np.array_equal(scorer.score(images[split.public[:10]]), audit.raw_scores["public"][:10])
