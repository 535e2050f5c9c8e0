"""Reports: metrics per method with counts and intervals, strict JSON, scores.npz / scores.csv contents, the plots or
the one-line hint, the summary table and its legend."""
from __future__ import annotations

import builtins
import csv
import json

import numpy as np
import pytest

from qmia_fast import metrics
from qmia_fast.results import report
from qmia_fast.atomic_io import sha256_file
from qmia_fast.attack import majority_vote
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


def attack_like_arrays(methods, labels, n_models=5):
    """Arrays as an audit holds them: raw scores, a bag's thresholds [B, N] and votes consistent with them."""
    rng = np.random.default_rng(1)
    log_raw = -methods["qmia_bag"][0]
    thresholds = log_raw[None, :] + rng.normal(0.0, 1.0, size=(n_models, len(labels)))
    votes, _ = majority_vote(log_raw, thresholds)
    return report.score_arrays(methods, labels, raw_scores=np.exp(log_raw), indices=np.arange(len(labels)) + 7,
                               votes=votes, thresholds=thresholds)


def test_build_report_holds_every_metric(results):
    methods, labels = results
    built = report.build_report(methods, labels, config={"alpha": 0.01}, seed=3, alpha=0.01,
                                timings={"fit_s": 1.5}, extra={"note": "x"})
    assert built["format"] == "qmia-fast/report" and built["version"] == 2
    assert list(built["methods"]) == ["qmia_bag", "single_regressor", "marginal_threshold"]
    bag = built["methods"]["qmia_bag"]
    assert bag["title"] == "QMIA-bag"
    assert bag["auc"] == pytest.approx(metrics.auc(methods["qmia_bag"][0], labels))
    assert set(bag["tpr_at_fpr"]) == {"1%", "0.1%", "0.01%", "0%"}
    assert bag["tpr_at_fpr"]["1%"] == metrics.tpr_at_fpr(methods["qmia_bag"][0], labels, 0.01)
    # 500 non-members resolve 1% (5 false positives) but not 0.1% (half of one).
    assert bag["tpr_at_fpr"]["0.1%"] is None and bag["operating_points"]["0.1%"]["resolvable"] is False
    point = bag["operating_points"]["1%"]
    assert point["tpr"] == point["tp"] / 500 and point["fp"] <= 5
    assert point["tpr_ci"] == list(metrics.clopper_pearson(point["tp"], 500))
    decision = bag["decision"]
    # alpha is stored once, at the top level; the decision refers to it.
    assert decision["kind"] == "calibrated" and "alpha" not in decision and built["alpha"] == 0.01
    assert decision["fp"] == int(np.count_nonzero(methods["qmia_bag"][1] & (labels == 0)))
    assert decision["fpr_ci"] == list(metrics.clopper_pearson(decision["fp"], 500))
    assert "decision" not in built["methods"]["marginal_threshold"]
    # 500 non-members x 1% = 5 expected false positives: alpha is not resolved, and the report says so.
    assert built["resolution"]["alpha_resolved"] is False and built["resolution"]["min_resolvable_fpr"] == 1 / 500
    assert len(built["warnings"]) == 1 and "at least 1000" in built["warnings"][0]
    assert built["seed"] == 3 and built["config"] == {"alpha": 0.01} and built["timings_s"] == {"fit_s": 1.5}
    assert built["versions"]["numpy"] == np.__version__
    assert built["build_info"]  # a dict from build_info(), or "unavailable ..."
    assert built["note"] == "x" and built["n_members"] == 500
    json.dumps(built, allow_nan=False)


def test_a_resolved_alpha_gives_no_warning(results):
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.02)  # 500 x 2% = 10 expected false positives
    assert built["warnings"] == [] and built["resolution"]["alpha_resolved"] is True


def test_one_class_is_an_input_error():
    with pytest.raises(InputError, match="at least one member"):
        report.build_report({"s": (np.array([0.1, 0.2]), None)}, np.array([0, 0]))


def test_oracle_threshold_is_reported_beside_the_decision(results):
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01, oracle_alpha=0.05)
    oracle = built["methods"]["marginal_threshold"]["oracle"]
    assert oracle["kind"] == "oracle" and oracle["alpha"] == 0.05 and oracle["fpr"] <= 0.05
    assert oracle["tpr"] == metrics.tpr_at_fpr(methods["marginal_threshold"][0], labels, 0.05)


def test_vote_threshold_is_the_vote():
    rng = np.random.default_rng(2)
    for n_models in (1, 2, 3, 4, 7):
        log_score = np.round(rng.normal(size=400), 1)
        thresholds = np.round(rng.normal(size=(n_models, 400)), 1)  # ties with the scores too
        _, decision = majority_vote(log_score, thresholds)
        np.testing.assert_array_equal(log_score < report.vote_threshold(thresholds), decision)


def test_write_report_files(tmp_path, results):
    pytest.importorskip("matplotlib")
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01)
    arrays = attack_like_arrays(methods, labels)
    written = report.write_report(tmp_path / "out", built, arrays)
    names = [p.name for p in written["files"]]
    assert names == ["scores.npz", "scores.csv", "scores.csv.json", "leakpro.json", "roc.png", "roc_log.png",
                     "score_histogram.png", "threshold_scatter.png", "report.json"]
    assert written["note"] is None
    for png in names[4:8]:
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(tmp_path / "out" / "scores.npz") as saved:
        assert set(saved.files) == {"labels", "indices", "raw_scores", "votes", "bag_threshold", "metadata",
                                    "membership_qmia_bag", "decision_qmia_bag", "membership_single_regressor",
                                    "decision_single_regressor", "membership_marginal_threshold"}
        np.testing.assert_array_equal(saved["indices"], np.arange(1000) + 7)
        assert json.loads(str(saved["metadata"]))["alpha"] == 0.01
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    # report.json is written last and names every other file with its hash.
    assert list(on_disk["files"]) == names[:-1]
    assert all(entry["sha256"] == sha256_file(tmp_path / "out" / name) for name, entry in on_disk["files"].items())
    report.validate_report(on_disk)
    # Nothing temporary is left behind.
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_scores_csv_has_one_row_per_image_with_everything_a_reviewer_needs(tmp_path, results):
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01)
    arrays = attack_like_arrays(methods, labels)
    arrays["files"] = np.asarray([f"class{i % 3}/img {i},{i}.png" for i in range(1000)])  # a comma to quote
    report.write_report(tmp_path, built, arrays, plots=False)
    with open(tmp_path / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "file", "label", "raw_score", "log_score", "bag_threshold", "votes",
                             "membership_score", "decision", "membership_single_regressor",
                             "decision_single_regressor", "membership_marginal_threshold"]
    assert len(rows) == 1000
    for i in (0, 499, 500, 999):
        row = rows[i]
        assert row["file"] == f"class{i % 3}/img {i},{i}.png" and int(row["index"]) == i + 7
        assert int(row["label"]) == labels[i]
        assert float(row["raw_score"]) == arrays["raw_scores"][i]  # every bit kept
        assert float(row["log_score"]) == pytest.approx(np.log(arrays["raw_scores"][i]), rel=1e-15)
        assert float(row["membership_score"]) == methods["qmia_bag"][0][i]
        assert int(row["decision"]) == int(methods["qmia_bag"][1][i])
    # The vote's threshold reproduces the votes: member iff log score < threshold.
    called = [float(r["log_score"]) < float(r["bag_threshold"]) for r in rows]
    np.testing.assert_array_equal(called, arrays["votes"] > 5 // 2)


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
    assert "pip install '.[plot]'" in written["note"]
    assert "\n" not in written["note"]
    assert sorted(p.name for p in written["files"]) == ["leakpro.json", "report.json", "scores.csv", "scores.csv.json",
                                                                "scores.npz"]
    assert json.loads((tmp_path / "report.json").read_text())["plots"] == written["note"]


def test_score_arrays_shape_check(results):
    methods, labels = results
    with pytest.raises(InputError, match="raw_scores"):
        report.score_arrays(methods, labels, raw_scores=np.ones(3))


def test_summary_table_names_each_column_and_explains_it(results):
    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01)
    table = report.format_summary_table(built)
    lines = table.splitlines()
    group, header = lines[0], lines[1]
    assert "decision at alpha=1%" in group and "oracle" not in table
    assert header.split()[:7] == ["method", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "bal.", "acc.", "FPR"]
    # The calibrated decision's rates are no longer under the same headers as the ROC's.
    assert "FPR@1%" not in table
    assert lines[3].startswith("QMIA-bag") and lines[4].startswith("  95% CI")
    bag = built["methods"]["qmia_bag"]
    assert f"{bag['auc']:.4f}" in lines[3]
    assert f"{100 * bag['decision']['fpr']:.2f}%" in lines[3]
    low, high = (100 * v for v in bag["operating_points"]["1%"]["tpr_ci"])
    assert f"{low:.1f}-{high:.1f}%" in lines[4]
    assert lines[3].split()[3] == "n/r"  # TPR@0.1%FPR on 500 non-members
    marginal = next(line for line in lines if line.startswith("marginal threshold"))
    assert marginal.rstrip().endswith("-")  # no fixed decision given for this row
    legend = "\n".join(lines[lines.index("") + 1:])
    assert "bal. acc.: best-threshold balanced accuracy" in legend
    assert "n/r" in legend and "1/500" in legend and "Clopper-Pearson" in legend
    assert "decision at alpha=1%" in legend
    assert max(len(line) for line in legend.splitlines()) <= 100


def test_summary_table_oracle_columns_have_their_own_name(results):
    methods, labels = results
    built = report.build_report({"scores": (methods["qmia_bag"][0], None)}, labels, oracle_alpha=0.05)
    table = report.format_summary_table(built)
    assert "oracle threshold at 5%" in table.splitlines()[0] and "decision at" not in table
    assert "oracle threshold:" in table  # in the legend


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
    np.testing.assert_array_equal(arrays["bag_threshold"], report.vote_threshold(result.thresholds))
    written = report.write_report(tmp_path, built, arrays, plots=False)
    assert sorted(p.name for p in written["files"]) == ["leakpro.json", "report.json", "scores.csv", "scores.csv.json",
                                                                "scores.npz"]
    report.validate_report(json.loads((tmp_path / "report.json").read_text()))


def test_plots_span_the_resolvable_range_and_say_what_was_audited(results):
    pytest.importorskip("matplotlib")
    from qmia_fast.results import plots

    methods, labels = results
    built = report.build_report(methods, labels, alpha=0.01, config={
        "spec": {"model": {"path": "/models/ddpm-cifar10"}, "data": {"path": "/data/cifar-10-batches-py"}},
        "score": {"method": "secmi", "t_sec": 100, "k": 10, "seed": 0}})
    arrays = attack_like_arrays(methods, labels)
    labels_arr = np.asarray(labels)
    figures = plots.roc_figures({name: m[0] for name, m in methods.items()}, labels_arr, built)
    log_axes = figures["roc_log.png"].axes[0]
    assert log_axes.get_xscale() == "log" and log_axes.get_xlim() == pytest.approx((1 / 500, 1.0))
    assert log_axes.get_ylim() == pytest.approx((1 / 500, 1.0))
    title = log_axes.get_title()
    assert "ddpm-cifar10" in title and "secmi (t_sec=100, k=10)" in title and "cifar-10-batches-py" in title
    assert "500 members vs 500 non-members" in title
    legend = [text.get_text() for text in log_axes.get_legend().get_texts()]
    assert any(t.startswith("QMIA-bag (AUC ") for t in legend) and "alpha = 1%" in legend
    assert any("decision at alpha" in t for t in legend)
    assert any(line.get_linestyle() == "--" for line in log_axes.get_lines())  # the chance diagonal
    assert log_axes.get_xlabel().startswith("false positive rate")
    histogram = plots.score_histogram_figure(built, arrays).axes[0]
    assert "log s(x)" in histogram.get_xlabel() and histogram.get_ylabel()
    assert any("members, n = 500" in t.get_text() for t in histogram.get_legend().get_texts())
    scatter = plots.threshold_scatter_figure(built, arrays).axes[0]
    assert "bag threshold" in scatter.get_ylabel() and "log s(x)" in scatter.get_xlabel()
    texts = [t.get_text() for t in scatter.get_legend().get_texts()]
    called = int(np.count_nonzero(arrays["votes"][:500] > 2))
    assert f"members: {called} of 500 called member" in texts


def test_long_names_wrap_in_plot_titles_and_the_histogram_names_its_axis(tmp_path):
    """A long model or data name must not run off the figure; the histogram's title says log s(x), as its axis."""
    pytest.importorskip("matplotlib")
    from qmia_fast.results import plots

    labels = np.r_[np.ones(20), np.zeros(40)].astype(int)
    rng = np.random.default_rng(0)
    raw = np.exp(rng.normal(size=60) - labels)
    long_name = "a-very-long-model-folder-name-" * 4
    report = {"n_members": 20, "n_nonmembers": 40, "alpha": 0.01, "methods": {},
              "config": {"spec": {"model": {"path": f"/x/{long_name}"}, "data": {"path": "/d/" + long_name}},
                         "score": {"method": "loss", "t": 200}}}
    figure = plots.score_histogram_figure(report, {"raw_scores": raw, "labels": labels})
    title = figure.axes[0].get_title()
    assert title.startswith("Log membership score log s(x) by set")
    assert long_name.strip("-") in title.replace("\n", "").replace(" ", "") or len(title.splitlines()) > 3
    assert max(len(line) for line in title.splitlines()) <= int(figure.get_figwidth() * 12)


def test_a_single_point_panel_is_not_zoomed_into_one_column():
    pytest.importorskip("matplotlib")
    from qmia_fast.experiments.writing import fit_axes, new_figure

    figure, axes = new_figure(1, 1, width=3.0)
    ax = axes[0][0]
    ax.plot([4.0], [0.5], marker="o")
    ax.set_title("The attack across targets (200 members, ± sd over 3 seeds) on the one target given here")
    fit_axes(ax)
    low, high = ax.get_xlim()
    assert low <= 2.0 and high >= 6.0 and "\n" in ax.get_title()
