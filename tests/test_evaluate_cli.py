"""`qmia-fast evaluate`: every input form, the direction read from the file or stated (never guessed), `score`'s
output evaluated as written, written files, and one-line errors with exit status 2."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qmia_fast import metrics
from qmia_fast.cli import cli
from qmia_fast.results import validate_report
from qmia_fast.results.score_files import read_score_table, score_metadata, write_scores
from cli_helpers import invoke


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 200)
    raw = np.exp(rng.normal(size=400) - 0.8 * labels)  # raw scores: lower = member
    return raw, labels


def run(*args):
    return invoke("evaluate", *args)


def expected_auc(raw, labels):
    return metrics.auc(-raw, labels)


def report_of(folder):
    return json.loads((folder / "report.json").read_text())


def test_npz_input_writes_report(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "in.npz", scores=raw, labels=labels)
    result = run(tmp_path / "in.npz", "--lower-is-member", "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, result.output
    written = report_of(tmp_path / "out")
    assert written["methods"]["scores"]["auc"] == pytest.approx(expected_auc(raw, labels))
    assert written["config"]["direction"] == "lower_is_member"
    assert f"{expected_auc(raw, labels):.4f}" in result.output
    for name in ("scores.npz", "scores.csv", "leakpro.json"):
        assert (tmp_path / "out" / name).exists()
    validate_report(written)


def test_stated_direction_flips_the_auc(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "in.npz", score=raw, labels=labels)
    lower = run(tmp_path / "in.npz", "--lower-is-member", "--out", tmp_path / "a", "--no-plots")
    higher = run(tmp_path / "in.npz", "--higher-is-member", "--out", tmp_path / "b", "--no-plots")
    assert lower.exit_code == higher.exit_code == 0
    auc_lower = report_of(tmp_path / "a")["methods"]["scores"]["auc"]
    auc_higher = report_of(tmp_path / "b")["methods"]["scores"]["auc"]
    assert auc_lower == pytest.approx(1 - auc_higher)


@pytest.mark.parametrize("inputs", [["s.npy", "l.npy"], ["pairs.npy"], ["in.npz"], ["plain.csv"]])
def test_a_file_without_a_direction_needs_one_stated(tmp_path, data, inputs):
    raw, labels = data
    np.save(tmp_path / "s.npy", raw)
    np.save(tmp_path / "l.npy", labels)
    np.save(tmp_path / "pairs.npy", np.stack([raw, labels], axis=1))
    np.savez(tmp_path / "in.npz", scores=raw, labels=labels)
    (tmp_path / "plain.csv").write_text("score,label\n" + "".join(f"{float(s)!r},{y}\n" for s, y in zip(raw, labels)))
    paths = [tmp_path / name for name in inputs]
    refused = run(*paths)
    assert refused.exit_code == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "--lower-is-member" in refused.stderr and "--higher-is-member" in refused.stderr
    result = run(*paths, "--lower-is-member")
    assert result.exit_code == 0, result.output
    assert f"{expected_auc(raw, labels):.4f}" in result.output


def test_csv_input_with_alpha_and_plots(tmp_path, data):
    pytest.importorskip("matplotlib")
    raw, labels = data
    lines = ["Score,Label"] + [f"{float(s)!r},{int(y)}" for s, y in zip(raw, labels)]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    result = run(tmp_path / "in.csv", "--lower-is-member", "--alpha", "0.05", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    written = report_of(tmp_path / "out")
    oracle = written["methods"]["scores"]["oracle"]
    assert oracle["kind"] == "oracle" and oracle["fpr"] <= 0.05
    assert oracle["tpr"] == metrics.tpr_at_fpr(-raw, labels, 0.05)
    assert "oracle threshold at 5%" in result.output
    for name in ("roc.png", "roc_log.png", "score_histogram.png"):
        assert (tmp_path / "out" / name).exists()
    # 200 non-members x 5% = 10 expected false positives: resolved, so no warning.
    assert written["warnings"] == [] and "warning" not in result.stderr


def test_alpha_the_holdout_cannot_resolve_is_warned_on_stderr(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "in.npz", scores=raw, labels=labels)
    result = run(tmp_path / "in.npz", "--lower-is-member", "--alpha", "0.01", "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "at least 1000" in warning[0]
    assert report_of(tmp_path / "out")["warnings"] == [warning[0][len("warning: "):]]


def test_attack_scores_npz_is_read_per_method(tmp_path, data):
    raw, labels = data
    np.savez(tmp_path / "scores.npz", labels=labels, membership_qmia_bag=-raw, decision_qmia_bag=raw < 0.3,
             membership_marginal_threshold=-raw + 0.1 * np.arange(400))
    result = run(tmp_path / "scores.npz", "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "QMIA-bag" in result.output and "marginal threshold" in result.output
    written = report_of(tmp_path / "out")
    assert written["methods"]["qmia_bag"]["auc"] == pytest.approx(expected_auc(raw, labels))
    decision = written["methods"]["qmia_bag"]["decision"]
    assert {k: decision[k] for k in ("fpr", "tpr")} == metrics.decision_rates(raw < 0.3, labels)
    assert "decision" not in written["methods"]["marginal_threshold"]
    # membership_* arrays are higher = member by definition: stating the opposite is refused.
    contradicted = run(tmp_path / "scores.npz", "--lower-is-member")
    assert contradicted.exit_code == 2 and "contradicts" in contradicted.stderr
    assert run(tmp_path / "scores.npz", "--higher-is-member").exit_code == 0


def test_score_file_metadata_gives_the_direction(tmp_path, data):
    raw, labels = data
    metadata = score_metadata("lower_is_member", score={"method": "loss", "t": 200})
    for suffix in (".npz", ".csv"):
        path = tmp_path / f"s{suffix}"
        write_scores(path, raw, np.arange(400), metadata, labels=labels)
        table = read_score_table([path])
        assert table.direction == "lower_is_member" and table.metadata["score"]["method"] == "loss"
        result = run(path)
        assert result.exit_code == 0, result.output
        assert f"{expected_auc(raw, labels):.4f}" in result.output
        contradicted = run(path, "--higher-is-member")
        assert contradicted.exit_code == 2
        assert "--higher-is-member contradicts" in contradicted.stderr and "lower-is-member" in contradicted.stderr


def test_score_then_evaluate_through_the_cli(tmp_path):
    """`qmia-fast score --split ... --out s.npz` then `qmia-fast evaluate s.npz`: no option needed, and the AUC is
    the one of the raw scores taken lower = member (the default used to invert it)."""
    from qmia_fast.models import UNet, save_model
    from qmia_fast.schedule import linear_schedule

    torch.manual_seed(0)
    net = UNet(T=1000, ch=32, ch_mult=(1, 2), attn=(), num_res_blocks=1, dropout=0.0, in_ch=1, img_size=8)
    save_model(net, tmp_path / "model", linear_schedule())
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.integers(0, 256, size=(60, 1, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "split.npz", mia_train_idxs=np.arange(0, 60, 3),
             mia_eval_idxs=np.setdiff1d(np.arange(60), np.arange(0, 60, 3)))
    for suffix in (".npz", ".csv"):
        out = tmp_path / f"s{suffix}"
        scored = CliRunner().invoke(cli, ["score", "--model", str(tmp_path / "model"), "--data",
                                          str(tmp_path / "images.npy"), "--split", str(tmp_path / "split.npz"),
                                          "--method", "loss", "--device", "cpu", "--no-progress", "--out", str(out)])
        assert scored.exit_code == 0, scored.output
        table = read_score_table([out])
        raw, labels = table.scores["scores"], table.labels
        result = run(out, "--out", tmp_path / f"evaluated{suffix}", "--no-plots")
        assert result.exit_code == 0, result.output
        written = report_of(tmp_path / f"evaluated{suffix}")
        assert written["methods"]["scores"]["auc"] == metrics.auc(-raw, labels)
        assert written["config"]["direction"] == "lower_is_member"
        validate_report(written)


def test_an_audit_scores_csv_can_be_evaluated(tmp_path, data):
    from qmia_fast.results import report

    raw, labels = data
    built = report.build_report({"qmia_bag": (-raw, raw < 0.3)}, labels, alpha=0.01)
    report.write_report(tmp_path / "audit", built, report.score_arrays({"qmia_bag": (-raw, raw < 0.3)}, labels),
                        plots=False)
    result = run(tmp_path / "audit" / "scores.csv")
    assert result.exit_code == 0, result.output
    assert f"{expected_auc(raw, labels):.4f}" in result.output


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.savez(p / "x.npz", scores=np.ones(3)), "no labels array"),
    (lambda p: np.savez(p / "x.npz", values=np.ones(3), labels=np.ones(3)), "no scores array"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones(3), labels=np.array([0, 1])), "labels has 2 entries"),
    (lambda p: np.savez(p / "x.npz", scores=np.array([1.0, np.nan]), labels=np.array([0, 1])), "finite"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones(2), labels=np.array([0, 3])), "0 (non-member) or 1"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones(2), labels=np.array([1, 1])), "all 2 samples are members"),
    (lambda p: np.savez(p / "x.npz", scores=np.ones((2, 2)), labels=np.array([0, 1])), "1-D"),
    (lambda p: (p / "x.npz").write_bytes(b"garbage"), "x.npz"),
    (lambda p: (p / "x.csv").write_text("a,b\n1,2\n"), "no score column"),
    (lambda p: (p / "x.csv").write_text("score,label\n1,x\n"), "line 2"),
    (lambda p: (p / "x.csv").write_text("# not metadata\nscore,label\n1,0\n"), "metadata line"),
    (lambda p: (p / "x.csv").write_text("# qmia-fast/scores {broken\nscore,label\n1,0\n"), "not valid JSON"),
    (lambda p: (p / "x.csv").write_bytes(b"score,label\n\xff\xfe,1\n"), "UTF-8"),
    (lambda p: np.save(p / "x.npy", np.ones(3)), "N x 2"),
    (lambda p: (p / "x.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"), "x.npy"),
    (lambda p: (p / "x.txt").write_text("1"), "unsupported file type"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, make, fragment):
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    result = run(path, "--lower-is-member")
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_a_declared_memory_bomb_is_refused_before_allocation(tmp_path):
    # A header that claims 2**40 float64 scores: refused from the header, never allocated.
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 2), }".ljust(117) + "\n"
    (tmp_path / "bomb.npy").write_bytes(b"\x93NUMPY\x01\x00" + bytes([len(header), 0]) + header.encode())
    result = run(tmp_path / "bomb.npy", "--lower-is-member")
    assert result.exit_code == 2 and "bomb.npy" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_file_is_exit_2(tmp_path):
    result = run(tmp_path / "nope.npz")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
