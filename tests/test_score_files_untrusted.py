"""Score files as another tool or person may hand them over: every method read, contradictions refused, memory bounded, CSV cells safe."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from qmia_fast.errors import DataError
from qmia_fast.results import report
from qmia_fast.results import csv_reading
from qmia_fast.results.interop import display_name
from qmia_fast.results.score_files import read_score_table, score_metadata, write_scores

from cli_helpers import invoke, one_line_error


def run(*args):
    return invoke("evaluate", *args)




@pytest.fixture
def audit(tmp_path):
    """An audit-like folder written by the report writer: three methods, votes, thresholds, file names."""
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 50)
    raw = np.exp(rng.normal(size=100) - labels)
    results = {"qmia_bag": (-raw, raw < 0.5), "single_regressor": (-raw + 0.1, raw < 0.4),
               "marginal_threshold": (-raw * 2, raw < 0.3)}
    built = report.build_report(results, labels, alpha=0.01)
    names = ["=cmd|' /C calc'!A0", "a\rb.png", "caf\udcc3.png", "+1.png", "-x.png", "@y.png"] + \
        [f"img{i}.png" for i in range(94)]
    arrays = report.score_arrays(results, labels, raw_scores=raw, votes=(raw < 0.5).astype(int),
                                 thresholds=np.log(np.full((1, 100), 0.5)), files=[display_name(n) for n in names])
    report.write_report(tmp_path / "audit", built, arrays, plots=False)
    return tmp_path / "audit", built


def test_an_audits_scores_csv_gives_every_method_as_its_npz_does(audit):
    """evaluate on scores.csv reports the bag and both baselines, with the numbers scores.npz gives."""
    folder, built = audit
    from_csv = read_score_table([folder / "scores.csv"])
    from_npz = read_score_table([folder / "scores.npz"])
    assert list(from_csv.scores) == list(from_npz.scores) == ["qmia_bag", "single_regressor", "marginal_threshold"]
    for name in from_npz.scores:
        np.testing.assert_array_equal(from_csv.scores[name], from_npz.scores[name])
    assert set(from_csv.decisions) == set(from_npz.decisions)
    result = run(folder / "scores.csv")
    assert result.exit_code == 0, result.output
    assert "single regressor" in result.output and "marginal threshold" in result.output


def test_scores_csv_rows_survive_any_file_name_and_cells_are_not_formulas(audit):
    """A CR in a name keeps its row, formula-like names are prefixed with ', undecodable bytes are escaped; the
    README's csv.DictReader snippet reads one dict per image with the right columns."""
    folder, _ = audit
    with open(folder / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 100 and all(row["label"] in ("0", "1") for row in rows)
    files = [row["file"] for row in rows[:6]]
    assert files[0].startswith("'=") and files[3].startswith("'+") and files[4].startswith("'-") \
        and files[5].startswith("'@")
    assert files[1] == "a\\x0db.png" and files[2] == "caf\\xc3.png"
    with open(folder / "scores.csv") as handle:  # universal newlines, as README's snippet opens it
        assert len(list(csv.DictReader(handle))) == 100


def test_a_non_utf8_image_name_does_not_fail_the_audit_late(tmp_path):
    """Names from an image folder are escaped before any work, so a name that is not UTF-8 cannot fail the
    writes after scoring and fitting."""
    assert display_name("caf\udcc3.png") == "caf\\xc3.png"
    assert display_name("back\\slash.png") == "back\\\\slash.png"


def test_score_csv_has_no_comment_line_and_its_sidecar_is_bound_to_it(tmp_path):
    """score's CSV reads with csv.DictReader as it is; its metadata sits in NAME.csv.json with the CSV's hash, so
    an edited CSV is refused instead of read under metadata that describes other bytes."""
    path = tmp_path / "s.csv"
    write_scores(path, np.arange(1.0, 21.0), np.arange(20), score_metadata("lower_is_member"),
                 labels=np.arange(20) % 2)
    with open(path, newline="") as handle:
        assert list(csv.DictReader(handle))[0] == {"index": "0", "score": "1.0", "label": "0"}
    assert read_score_table([path]).direction == "lower_is_member"
    path.write_text(path.read_text().replace("1.0,0", "100.0,0"))
    with pytest.raises(DataError, match="sidecar"):
        read_score_table([path])


def test_old_csv_files_with_a_metadata_line_still_read(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text('# qmia-fast/scores {"direction": "lower_is_member"}\nindex,score,label\n0,1.0,1\n1,2.0,0\n')
    table = read_score_table([path])
    assert table.direction == "lower_is_member" and list(table.labels) == [1, 0]


@pytest.mark.parametrize("alpha", ['"0.01"', "[0.1]", "0", "NaN", "2", "-1", "true"])
def test_metadata_alpha_that_is_not_a_level_is_refused(tmp_path, alpha):
    """alpha in a score file's metadata must be a number strictly between 0 and 1, never reported as resolved."""
    meta = '{"format": "qmia-fast/audit-scores", "alpha": %s}' % alpha
    np.savez(tmp_path / "s.npz", membership_qmia_bag=np.arange(20.0), labels=np.arange(20) % 2,
             metadata=np.array(meta))
    one_line_error(run(tmp_path / "s.npz"), "alpha")


@pytest.mark.parametrize("make, needle", [
    (lambda p: np.savez(p / "s.npz", scores=np.ones(4), labels=np.array([0, 1, 0, 1]),
                        metadata=np.array("[" * 50000 + "]" * 50000)), "nested"),
    (lambda p: (p / "s.csv").write_text("score,label\n" + "1" * 140000 + ",1\n2,0\n"), "malformed CSV"),
    (lambda p: np.savez(p / "s.npz", membership_qmia_bag=np.arange(4.0), labels=np.array([0, 1, 0, 1]),
                        bag_threshold=np.array(["a", "b", "c", "d"])), "bag_threshold"),
    (lambda p: np.savez(p / "s.npz", membership_qmia_bag=np.arange(4.0), labels=np.array([0, 1, 0, 1]),
                        votes=np.array([1e30, 0, 1, 1])), "votes"),
    (lambda p: np.savez(p / "s.npz", scores=np.arange(20.0), labels=np.ones(5)), "labels has 5 entries"),
    (lambda p: np.savez(p / "s.npz", scores=np.arange(4.0), membership_qmia_bag=np.arange(4.0),
                        labels=np.array([0, 1, 0, 1])), "ambiguous"),
    (lambda p: (p / "s.csv").write_text('# qmia-fast/scores {"direction": "lower_is_member"}\n'
                                        "membership_score,label\n1,0\n2,1\n"), "higher-is-member"),
])
def test_malformed_or_contradicting_score_files_are_one_line_errors(tmp_path, make, needle):
    """Deep JSON, huge CSV fields, strings where numbers go, absurd vote counts, scores without one label each,
    two kinds of scores, a direction the columns contradict: refused in one line, never an internal error."""
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    one_line_error(run(path, *(["--lower-is-member"] if path.suffix == ".csv" and "membership" not in
                                  path.read_text()[:200] else [])), needle)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfscore,label\n1.0,1\n2.0,0\n")
    table = read_score_table([path])
    assert list(table.scores["scores"]) == [1.0, 2.0]


def test_csv_memory_is_bounded_by_rows_not_only_bytes(tmp_path, monkeypatch):
    """A CSV is streamed into float64 columns, and more rows than the cap are refused (the cap is what bounds
    memory: 8 bytes per kept cell), not read whole into Python objects."""
    monkeypatch.setattr(csv_reading, "MAX_CSV_ROWS", 100)
    path = tmp_path / "big.csv"
    path.write_text("score,label\n" + "".join(f"{i}.5,{i % 2}\n" for i in range(101)))
    with pytest.raises(DataError, match="more than 100 rows"):
        read_score_table([path])
    path.write_text("score,label\n" + "".join(f"{i}.5,{i % 2}\n" for i in range(100)))
    assert len(read_score_table([path]).labels) == 100


def test_evaluate_writes_vote_counts_it_validated(audit, tmp_path):
    """Votes read back are whole numbers within int range, so evaluate's own scores.csv never wraps them."""
    folder, _ = audit
    result = run(folder / "scores.npz", "--out", tmp_path / "again", "--no-plots")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "again" / "scores.csv", newline="") as handle:
        votes = {row["votes"] for row in csv.DictReader(handle)}
    assert votes <= {"0", "1"}
    sidecar = json.loads((tmp_path / "again" / "scores.csv.json").read_text())
    assert sidecar["metadata"]["primary_method"] == "qmia_bag"
