"""`qmia-fast evaluate`: every input form, score direction, written files, and one-line errors with exit status 2."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from qmia_fast import metrics
from qmia_fast.cli import cli


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 200)
    raw = np.exp(rng.normal(size=400) - 0.8 * labels)  # raw scores: lower = member
    return raw, labels


def run(*args):
    result = CliRunner().invoke(cli, ["evaluate", *map(str, args)])
    return result


def expected_auc(raw, labels):
    return metrics.auc(-raw, labels)


def test_npz_input_writes_report(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "in.npz", scores=raw, labels=labels)
    result = run(tmp_path / "in.npz", "--lower-is-member", "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["methods"]["scores"]["auc"] == pytest.approx(expected_auc(raw, labels))
    assert written["config"]["direction"] == "lower_is_member"
    assert f"{expected_auc(raw, labels):.4f}" in result.output
    assert (tmp_path / "out" / "scores.npz").exists()


def test_direction_flips_the_auc(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "in.npz", score=raw, labels=labels)
    lower = run(tmp_path / "in.npz", "--lower-is-member", "--out", tmp_path / "a", "--no-plots")
    higher = run(tmp_path / "in.npz", "--out", tmp_path / "b", "--no-plots")
    assert lower.exit_code == higher.exit_code == 0
    auc_lower = json.loads((tmp_path / "a" / "report.json").read_text())["methods"]["scores"]["auc"]
    auc_higher = json.loads((tmp_path / "b" / "report.json").read_text())["methods"]["scores"]["auc"]
    assert auc_lower == pytest.approx(1 - auc_higher)


def test_two_npy_files_and_n_by_2_npy(tmp_path, data):
    raw, labels = data
    np.save(tmp_path / "s.npy", raw)
    np.save(tmp_path / "l.npy", labels)
    np.save(tmp_path / "pairs.npy", np.stack([raw, labels], axis=1))
    for inputs in ([tmp_path / "s.npy", tmp_path / "l.npy"], [tmp_path / "pairs.npy"]):
        result = run(*inputs, "--lower-is-member")
        assert result.exit_code == 0, result.output
        assert f"{expected_auc(raw, labels):.4f}" in result.output


def test_csv_input_with_alpha_and_plots(tmp_path, data):
    pytest.importorskip("matplotlib")
    raw, labels = data
    lines = ["Score,Label"] + [f"{float(s)!r},{int(y)}" for s, y in zip(raw, labels)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    result = run(tmp_path / "in.csv", "--lower-is-member", "--alpha", "0.05", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    decision = written["methods"]["scores"]["decision"]
    assert decision["fpr"] <= 0.05
    assert (tmp_path / "out" / "roc.png").exists() and (tmp_path / "out" / "roc_log.png").exists()


def test_attack_scores_npz_is_read_per_method(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "scores.npz", labels=labels, membership_qmia_bag=-raw, decision_qmia_bag=raw < 0.3,
             membership_marginal_threshold=-raw + 0.1 * np.arange(400))
    result = run(tmp_path / "scores.npz", "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "QMIA-bag" in result.output and "marginal threshold" in result.output
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["methods"]["qmia_bag"]["auc"] == pytest.approx(expected_auc(raw, labels))
    assert written["methods"]["qmia_bag"]["decision"] == metrics.decision_rates(raw < 0.3, labels)
    assert "decision" not in written["methods"]["marginal_threshold"]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.savez(p / "x.npz", scores=np.ones(3)), "no labels array"),
    (lambda p: np.savez(p / "x.npz", values=np.ones(3), labels=np.ones(3)), "no scores array"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones(3), labels=np.array([0, 1])), "labels has 2 entries"),
    (lambda p: np.savez(p / "x.npz", scores=np.array([1.0, np.nan]), labels=np.array([0, 1])), "finite"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones(2), labels=np.array([0, 3])), "0 (non-member) or 1"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones(2), labels=np.array([1, 1])), "all 2 samples are members"),
    (lambda p: (p / "x.npz").write_bytes(b"garbage"), "not a readable .npz"),
    (lambda p: (p / "x.csv").write_text("a,b\n1,2\n"), "no score column"),
    (lambda p: (p / "x.csv").write_text("score,label\n1,x\n"), "line 2"),
    (lambda p: np.save(p / "x.npy", np.ones(3)), "N x 2"),
    (lambda p: (p / "x.txt").write_text("1"), "unsupported file type"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, make, fragment):
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    result = run(path)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_file_is_exit_2(tmp_path):
    result = run(tmp_path / "nope.npz")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
