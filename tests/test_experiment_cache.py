"""The experiment cache uses an entry only if it is exactly what would be recomputed: keyed by the run identity, sealed by its hash."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import qmia_fast as qf
from qmia_fast.cli import cli
from qmia_fast.experiments.cache import FitCache, Fingerprints, ScoreCache

from model_helpers import random_images, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def model():
    return tiny_model(1, 8, attn=())


def scores(cache, model, images, fused=None):
    scorer = qf.Scorer(model, "loss", device="cpu", unet_batch=4, fused=fused)
    return cache.scores(scorer, model, images, np.arange(len(images)), "loss-t200", False)


@pytest.mark.parametrize("damage", ["reversed", "bomb", "meta_list", "meta_strings"])
def test_an_edited_or_damaged_score_entry_is_scored_again_not_used(tmp_path, model, damage):
    """A reversed scores.npy of the same shape, a header declaring 10**12 floats, meta.json as a list or with strings
    for numbers: the seal does not match, so the scores are computed again (and equal the first ones)."""
    said = []
    cache = ScoreCache(tmp_path, Fingerprints(), said.append)
    images = random_images(8, channels=1)
    first, cost = scores(cache, model, images)
    assert cost["cached"] is False
    (folder,) = list((tmp_path / "scores").iterdir())
    if damage == "reversed":
        np.save(folder / "scores.npy", first[::-1].copy())
    elif damage == "bomb":
        header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }".ljust(117) + "\n"
        (folder / "scores.npy").write_bytes(b"\x93NUMPY\x01\x00" + bytes([len(header), 0]) + header.encode())
    elif damage == "meta_list":
        (folder / "meta.json").write_text("[1, 2]")
    else:
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "seconds": "fast", "n": "8"}))
    again, cost = scores(cache, model, images)
    assert cost["cached"] is False and any("scoring them again" in line for line in said)
    np.testing.assert_array_equal(again, first)
    assert scores(cache, model, images)[1]["cached"] is True


def test_score_entries_are_keyed_by_the_whole_run_identity(tmp_path, model):
    """--fused on and off land in different cache entries, never one reused for the other."""
    cache = ScoreCache(tmp_path, Fingerprints(), lambda text: None)
    images = random_images(8, channels=1)
    scores(cache, model, images, fused=True)
    _, cost = scores(cache, model, images, fused=False)
    assert cost["cached"] is False and len(list((tmp_path / "scores").iterdir())) == 2


@pytest.mark.parametrize("edit", [
    lambda entry: {**entry, "value": {**entry["value"], "methods": {"qmia_bag": {"auc": 0.999}}}},
    lambda entry: {**entry, "value": {k: v for k, v in entry["value"].items() if k != "methods"}},
    lambda entry: [entry],
    None,
])
def test_an_edited_or_malformed_fit_entry_is_fitted_again(tmp_path, edit):
    """A fit JSON with its AUC set to 0.999, without "methods", of the wrong shape or nested 10**5 deep is a miss."""
    said = []
    cache = FitCache(tmp_path, said.append)
    key = {"seed": 1}
    cache.put(key, {"methods": {"qmia_bag": {"auc": 0.61, "tpr": np.float64(0.2), "n": np.int64(3)}}, "x": float("nan")})
    assert cache.get(key)["methods"]["qmia_bag"]["auc"] == 0.61
    path = cache.path(key)
    if edit is None:
        path.write_text("[" * 100000 + "]" * 100000)
    else:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    assert cache.get(key) is None and said


def test_a_cache_that_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cache").write_text("not a folder")
    result = CliRunner().invoke(cli, ["experiment", "oracle", "--out", str(tmp_path / "out"), "--budget", "tiny",
                                      "--no-progress"])
    assert result.exit_code == 2 and "cache" in result.stderr and len(result.stderr.strip().splitlines()) == 1
