"""`qmia-fast experiment`: every experiment end to end on a tiny target, caching, the defended model, intervals, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from model_helpers import tiny_model, tiny_unet
from qmia_fast.cli import cli
from qmia_fast.commands.experiment import NAMES
from qmia_fast.errors import ConfigError
from qmia_fast.experiments import EXPERIMENTS, defended_model
from qmia_fast.experiments.mismatch import shift_images
from qmia_fast.experiments.stats import mean_sd, rate_interval
from qmia_fast.metrics import clopper_pearson
from qmia_fast.models import save_model
from qmia_fast.schedule import linear_schedule
from cli_helpers import run

SIZE = 8
# The tiny budget, one thread, small UNet micro-batches: the whole suite of experiments in seconds.
FAST = ["--budget", "tiny", "--threads", "1", "--unet-batch", "16", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny 1 x 8 x 8 target and 120 labelled images split 30 / 50 / 40."""
    root = tmp_path_factory.mktemp("experiment")
    save_model(tiny_unet(1, SIZE, attn=(), perturb=0.2), root / "model", linear_schedule())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(120, 1, SIZE, SIZE), dtype=np.uint8)
    order = rng.permutation(120)
    np.savez(root / "data.npz", images=images, labels=np.arange(120) % 10, members=np.sort(order[:30]),
             public=np.sort(order[30:80]), holdout=np.sort(order[80:]))
    return root




def test_the_command_lists_every_experiment():
    assert list(NAMES) == [*EXPERIMENTS, "all"]


def test_all_experiments_write_report_results_and_figures_and_reuse_their_caches(workspace, tmp_path):
    out = tmp_path / "all"
    common = ["experiment", "all", "--model", workspace / "model", "--data", workspace / "data.npz", "--out", out,
              *FAST]
    first = run(*common)
    assert f"to {out}/" in first.output
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    assert list(results["experiments"]) == list(EXPERIMENTS)
    for module in EXPERIMENTS.values():
        assert f"## {module.TITLE}" in report
    for name, entry in results["experiments"].items():
        assert entry["figures"], name
        for figure in entry["figures"]:
            assert (out / figure).read_bytes()[:4] == b"\x89PNG"
            assert f"]({figure})" in report
    alpha = results["experiments"]["alpha"]["by_alpha"]["0.1"]["methods"]
    assert set(alpha) == {"qmia_bag", "single_regressor", "marginal_threshold"}
    assert alpha["qmia_bag"]["tpr_at_1pct"]["n"] == 2  # two bag seeds
    low, high = alpha["qmia_bag"]["fpr_ci"]
    assert 0.0 <= low <= high <= 1.0
    assert {s["method"] for s in results["experiments"]["timestep"]["settings"]} == {"secmi", "loss", "pia"}
    assert "classes" in results["experiments"]["mismatch"]["kinds"]
    assert len(results["experiments"]["targets"]["targets"]) == 2  # the given model and one trained variant
    assert (out / "targets" / "linear" / "model.pt").is_file()
    assert results["setup"]["sets"] == {"members": 30, "public": 30, "holdout": 30}

    # A second run into the same --out is refused without --overwrite; with it, every score and fit comes
    # from the cache, so the numbers are the same and nothing is scored again.
    refused = run(*common, expect=2)
    assert "--overwrite" in refused.output
    run(*common, "--overwrite")
    again = json.loads((out / "results.json").read_text())
    assert again["experiments"]["alpha"]["by_alpha"] == results["experiments"]["alpha"]["by_alpha"]
    assert again["experiments"]["alpha"]["score_cost"]["cached"] is True
    assert not list((out / "cache" / "scores").glob("*/chunks"))


def test_one_experiment_defaults_its_folder_and_records_the_command(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("experiment", "oracle", "--seeds", "1", *FAST)
    results = json.loads((tmp_path / "experiments" / "oracle" / "results.json").read_text())
    assert list(results["experiments"]) == ["oracle"]
    assert results["command"].startswith("qmia-fast experiment oracle")
    assert "--seeds 1" in results["command"]
    oracle = results["experiments"]["oracle"]
    assert set(oracle["oracle"]) == {"oracle_quantile", "oracle_likelihood_ratio"}
    assert oracle["threshold_error"]["bag_rmse"]["mean"] >= 0


def test_quick_selects_the_quick_grids(workspace, tmp_path):
    # The quick budget's grids on a tiny target (its 400-image cap does not bind on 90 images); how long
    # `all --quick` takes on the demo is measured in docs/experiments.md, not asserted here.
    out = tmp_path / "quick"
    run("experiment", "alpha", "--quick", "--model", workspace / "model", "--data", workspace / "data.npz",
        "--out", out, "--threads", "1", "--unet-batch", "16", "--no-progress")
    results = json.loads((out / "results.json").read_text())
    assert results["setup"]["budget"] == "quick"
    assert list(results["experiments"]["alpha"]["by_alpha"]) == ["0.01", "0.1"]
    assert results["experiments"]["alpha"]["by_alpha"]["0.1"]["methods"]["qmia_bag"]["tpr_at_1pct"]["n"] == 2


@pytest.mark.parametrize("args, message", [
    (["experiment", "nonsense"], "nonsense"),
    (["experiment", "alpha", "--seeds", "0"], "seeds"),
    (["experiment", "targets", "--variants", "linear,huge"], "--variants"),
    (["experiment", "targets", "--targets", "/nonexistent/model"], "nonexistent"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("qmia-fast: error")]
    assert len(lines) == 1 and message in lines[0]


def test_out_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    result = CliRunner().invoke(cli, ["experiment", "oracle", "--out", str(file), *FAST])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_the_defended_model_adds_reproducible_noise_of_scale_sigma():
    model = tiny_model(1, SIZE)
    x = torch.rand(6, 1, SIZE, SIZE) * 2 - 1
    t = torch.full((6,), 100, dtype=torch.long)
    with torch.no_grad():
        clean = model(x, t)
        assert torch.equal(defended_model(model, 0.0)(x, t), clean)
        noisy = defended_model(model, 0.5, seed=3)
        out = noisy(x, t)
        noise = (out - clean) / 0.5
        assert abs(float(noise.std()) - 1.0) < 0.1
        assert torch.equal(noisy(x, t), out)                       # same query, same answer
        # The same noise whatever else is in the batch (the UNet itself may round differently by batch).
        assert torch.allclose(noisy(x[3:], t[3:]), out[3:], atol=1e-5)
        assert not torch.equal(noisy(x, t + 1), out)               # another timestep, other noise
        assert not torch.equal(defended_model(model, 0.5, seed=4)(x, t), out)
    from qmia_fast.pipeline.resumable import fingerprint_model

    assert fingerprint_model(noisy) != fingerprint_model(defended_model(model, 0.25, seed=3))
    with pytest.raises(ConfigError, match="sigma"):
        defended_model(model, -1.0)


def test_mean_sd_and_the_interval_at_the_mean_count():
    assert mean_sd([1.0, 3.0]) == {"mean": 2.0, "sd": pytest.approx(2 ** 0.5), "n": 2}
    assert mean_sd([1.0])["sd"] != mean_sd([1.0])["sd"]  # NaN with one seed
    assert mean_sd([0.405] * 5) == {"mean": 0.405, "sd": 0.0, "n": 5}  # deterministic: exactly 0
    assert rate_interval([3, 4, 4], 1000) == clopper_pearson(4, 1000)  # the seeds' mean count, rounded
    assert all(v != v for v in rate_interval([], 1000)) and all(v != v for v in rate_interval([1], 0))


def test_pixel_shifts_stay_uint8_and_move_the_images():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 1, SIZE, SIZE), dtype=np.uint8)
    for kind in ("brightness", "contrast", "noise"):
        shifted = shift_images(images, kind, seed=0)
        assert shifted.dtype == np.uint8 and shifted.shape == images.shape
        assert not np.array_equal(shifted, images)
    assert shift_images(images, "brightness", 0).mean() > images.mean()
    assert shift_images(images, "contrast", 0).std() < images.std()
    assert np.array_equal(shift_images(images, "noise", 1), shift_images(images, "noise", 1))


def test_a_score_caches_cost_reads_in_the_singular_for_one_unet_call():
    from qmia_fast.experiments.summary import cost_text

    assert cost_text({"per_image_s": 0.0035, "unet_calls_per_image": 1, "n": 975, "seconds": 3.4}) == \
        "3.50 ms/image (1 UNet call), 975 images in 3.4 s"
    assert "(11 UNet calls)" in cost_text({"per_image_s": 0.02, "unet_calls_per_image": 11, "n": 10, "seconds": 0.2})
