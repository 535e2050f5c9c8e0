"""Reports: metrics per method, strict JSON, scores.npz contents, ROC plots or the one-line hint, the summary table."""
from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from qmia_fast import metrics, report
from qmia_fast.errors import InputError


@pytest.fixture
def results():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 500)
    bag = rng.normal(size=1000) + 1.5 * labels
    single = rng.normal(size=1000) + 1.0 * labels
    marginal = rng.normal(size=1000) + 0.2 * labels
    return {"qmia_bag": (bag, bag > 2.3), "single_regressor": (single, single > 2.3),
            "marginal_threshold": (marginal, None)}, labels


def test_build_report_holds_every_metric(results):
    methods, labels = results
    built = report.build_report(methods, labels, config={"alpha": 0.01}, seed=3, alpha=0.01,
                                timings={"fit_s": 1.5}, extra={"note": "x"})
    assert list(built["methods"]) == ["qmia_bag", "single_regressor", "marginal_threshold"]
    bag = built["methods"]["qmia_bag"]
    assert bag["title"] == "QMIA-bag"
    assert bag["auc"] == pytest.approx(metrics.auc(methods["qmia_bag"][0], labels))
    assert set(bag["tpr_at_fpr"]) == {"1%", "0.1%", "0.01%", "0%"}
    assert bag["tpr_at_fpr"]["1%"] == metrics.tpr_at_fpr(methods["qmia_bag"][0], labels, 0.01)
    assert set(bag["decision"]) == {"fpr", "tpr"}
    assert "decision" not in built["methods"]["marginal_threshold"]
    assert built["seed"] == 3 and built["config"] == {"alpha": 0.01} and built["timings_s"] == {"fit_s": 1.5}
    assert built["versions"]["numpy"] == np.__version__
    assert built["build_info"]  # a dict from build_info(), or "unavailable ..."
    assert built["note"] == "x" and built["n_members"] == 500
    json.dumps(built, allow_nan=False)


def test_nan_metrics_become_null():
    built = report.build_report({"s": (np.array([0.1, 0.2]), None)}, np.array([0, 0]))
    assert built["methods"]["s"]["auc"] is None
    json.dumps(built, allow_nan=False)


def test_write_report_files(tmp_path, results):
    pytest.importorskip("matplotlib")
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01)
    arrays = report.score_arrays(methods, labels, raw_scores=np.exp(-methods["qmia_bag"][0]),
                                 indices=np.arange(1000) + 7, votes=np.zeros(1000, int))
    written = report.write_report(tmp_path / "out", built, arrays)
    names = sorted(p.name for p in written["files"])
    assert names == ["report.json", "roc.png", "roc_log.png", "scores.npz"]
    assert written["note"] is None
    for png in ("roc.png", "roc_log.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = np.load(tmp_path / "out" / "scores.npz")
    assert set(saved.files) == {"labels", "indices", "raw_scores", "votes", "membership_qmia_bag",
                                "decision_qmia_bag", "membership_single_regressor",
                                "decision_single_regressor", "membership_marginal_threshold"}
    np.testing.assert_array_equal(saved["indices"], np.arange(1000) + 7)
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    # report.json is written last and names every other file with its hash.
    assert list(on_disk["files"]) == ["scores.npz", "roc.png", "roc_log.png"]
    from qmia_fast.atomic_io import sha256_file

    assert all(entry["sha256"] == sha256_file(tmp_path / "out" / name) for name, entry in on_disk["files"].items())
    # Nothing temporary is left behind.
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_without_matplotlib_json_is_still_written(tmp_path, results, monkeypatch):
    methods, labels = results
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    built = report.build_report(methods, labels)
    written = report.write_report(tmp_path, built, report.score_arrays(methods, labels))
    assert "pip install 'qmia-fast[plot]'" in written["note"]
    assert "\n" not in written["note"]
    assert sorted(p.name for p in written["files"]) == ["report.json", "scores.npz"]
    assert json.loads((tmp_path / "report.json").read_text())["plots"] == written["note"]


def test_score_arrays_shape_check(results):
    methods, labels = results
    with pytest.raises(InputError, match="raw_scores"):
        report.score_arrays(methods, labels, raw_scores=np.ones(3))


def test_summary_table(results):
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01)
    table = report.format_summary_table(built)
    lines = table.splitlines()
    assert len(lines) == 5
    assert "AUC" in lines[0] and "TPR@1%FPR" in lines[0] and "FPR@1%" in lines[0]
    assert lines[2].startswith("QMIA-bag") and lines[4].startswith("marginal threshold")
    bag = built["methods"]["qmia_bag"]
    assert f"{bag['auc']:.4f}" in lines[2]
    assert f"{100 * bag['decision']['fpr']:.2f}%" in lines[2]
    assert lines[4].rstrip().endswith("-")  # no fixed decision given for this row


def test_report_from_attack(tmp_path):
    from qmia_fast.attack import QuantileAttack, synthetic_problem

    public = synthetic_problem(200, seed=0)
    evaluation = synthetic_problem(100, 100, seed=1)
    attack = QuantileAttack(n_models=3, seed=4, width=4, depth=1, head_width=8, epochs=2, batch_size=64)
    result = attack.fit(public.images, public.scores).predict(evaluation.images, evaluation.scores)
    built, arrays = report.report_from_attack(attack, result, evaluation.labels, raw_scores=evaluation.scores,
                                              config={"method": "synthetic"}, timings={"predict_s": 0.1})
    assert list(built["methods"]) == ["qmia_bag", "single_regressor", "marginal_threshold"]
    assert built["config"]["method"] == "synthetic" and built["config"]["attack"]["n_models"] == 3
    assert built["seed"] == 4 and built["alpha"] == 0.01
    assert {"fit_bag_s", "fit_single_s", "predict_s"} <= set(built["timings_s"])
    assert built["fit"]["n_public"] == 200
    np.testing.assert_array_equal(arrays["votes"], result.votes)
    np.testing.assert_array_equal(arrays["decision_qmia_bag"], result.decision)
    written = report.write_report(tmp_path, built, arrays, plots=False)
    assert sorted(p.name for p in written["files"]) == ["report.json", "scores.npz"]
    json.loads((tmp_path / "report.json").read_text())
    print(report.format_summary_table(built))
