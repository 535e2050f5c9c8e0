"""Exports for other tools: leakpro.json has exactly the fields of LeakPro's MIA result with consistent values;
scores.csv names image files relative to the data folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qmia_fast import metrics
from qmia_fast.results import interop, report

# The fields of LeakPro's MIAResultSchema (leakpro/schemas.py), which forbids any other.
LEAKPRO_FIELDS = {"result_name", "result_type", "id", "tpr", "fpr", "roc_auc", "accuracy", "fixed_fpr",
                  "signal_values", "true_labels", "config", "tp", "fp", "tn", "fn"}


@pytest.fixture
def audit(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], [150, 400])
    bag = np.round(rng.normal(size=550) + 1.2 * labels, 2)  # ties
    marginal = rng.normal(size=550) + 0.3 * labels
    results = {"qmia_bag": (bag, bag > 2.0), "marginal_threshold": (marginal, marginal > 2.0)}
    built = report.build_report(results, labels, alpha=0.01, config={"score": {"method": "loss", "t": 200}})
    arrays = report.score_arrays(results, labels, raw_scores=np.exp(-bag), indices=np.arange(550) * 2)
    report.write_report(tmp_path, built, arrays, plots=False)
    return tmp_path, bag, labels


def test_leakpro_json_has_leakpros_fields_and_shapes(audit):
    folder, bag, labels = audit
    result = json.loads((folder / "leakpro.json").read_text())
    assert set(result) == LEAKPRO_FIELDS
    assert result["result_type"] == "MIAResult" and result["result_name"] == "QMIA-bag"
    n_points = len(np.unique(bag)) + 1
    for key in ("tpr", "fpr", "accuracy", "tp", "fp", "tn", "fn"):
        assert isinstance(result[key], list) and len(result[key]) == n_points, key
    assert all(isinstance(v, int) for v in result["true_labels"]) and result["true_labels"] == labels.tolist()
    assert result["signal_values"] == bag.tolist()  # higher = member, as LeakPro reads them
    assert isinstance(result["config"], dict) and result["config"]["score"] == {"method": "loss", "t": 200}
    assert result["config"]["sample_indices"] == (np.arange(550) * 2).tolist()


def test_leakpro_values_agree_with_our_metrics(audit):
    folder, bag, labels = audit
    result = json.loads((folder / "leakpro.json").read_text())
    fpr, tpr, _ = metrics.roc_curve(bag, labels)
    np.testing.assert_array_equal(result["fpr"], fpr)
    np.testing.assert_array_equal(result["tpr"], tpr)
    tp, fp, tn, fn = (np.asarray(result[k]) for k in ("tp", "fp", "tn", "fn"))
    assert ((tp + fn) == 150).all() and ((fp + tn) == 400).all()
    np.testing.assert_allclose(result["accuracy"], (tp + tn) / 550)
    # LeakPro recomputes the AUC by the trapezoid rule over these points: the same number.
    assert result["roc_auc"] == pytest.approx(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))
    assert result["roc_auc"] == metrics.auc(bag, labels)
    # 400 non-members resolve 1% and 10%; 0.1%, 0.01% and 0% are left out and named instead of given a number.
    assert result["fixed_fpr"] == {"TPR@1%FPR": metrics.tpr_at_fpr(bag, labels, 0.01),
                                   "TPR@10%FPR": metrics.tpr_at_fpr(bag, labels, 0.1)}
    assert result["config"]["unresolvable_fixed_fpr"] == ["TPR@0%FPR", "TPR@0.01%FPR", "TPR@0.1%FPR"]


@pytest.mark.parametrize("target, key", [(0.0, "TPR@0%FPR"), (1e-4, "TPR@0.01%FPR"), (1e-3, "TPR@0.1%FPR"),
                                         (1e-2, "TPR@1%FPR"), (0.1, "TPR@10%FPR"), (0.25, "TPR@25%FPR")])
def test_leakpro_keys(target, key):
    assert interop.leakpro_key(target) == key


class FakeLoaded:
    def __init__(self, format, files, n):
        self.format, self.files, self.images = format, tuple(files), np.zeros((n, 1, 2, 2), np.uint8)


def test_image_file_names_are_relative_to_the_data_folder(tmp_path):
    root = tmp_path / "pictures"
    files = [root / "cats" / "001.png", root / "dogs" / "002.png", Path("/elsewhere/003.png")]
    loaded = FakeLoaded("images", files, 3)
    assert interop.image_file_names(loaded, np.array([2, 0, 1]), root) == [
        "/elsewhere/003.png", "cats/001.png", "dogs/002.png"]
    # An array file is one file for all images: no per-image names.
    assert interop.image_file_names(FakeLoaded("npy", [tmp_path / "x.npy"], 3), np.arange(3), tmp_path) is None
