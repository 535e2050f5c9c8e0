"""Smoke runs of the scoring benchmark's machinery (seconds, no timing assertions): baseline fidelity, options, CLI, JSON and table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qmia_fast import benchmark
from qmia_fast.cli import cli
from qmia_fast.commands.bench import build_options, parse_batch_sizes
from qmia_fast.errors import ConfigError
from qmia_fast.scoring import Scorer

from model_helpers import tiny_model


def test_reference_unet_runs_pytorch_ddpm_attention_with_the_same_weights():
    model = tiny_model()
    reference, what = benchmark.reference_unet(model.net)
    assert "explicit bmm+softmax" in what
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 10, 500])
    with torch.no_grad():
        # Same function; float32 rounding differs between bmm+softmax and SDPA.
        torch.testing.assert_close(reference(x, t), model.net(x, t), rtol=1e-4, atol=1e-5)
    assert reference is not model.net and all(
        torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.net.state_dict().values()))


def test_secmi_baseline_gives_the_scorers_scores():
    model = tiny_model()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    baseline = benchmark.SecmiBaseline(model, torch.device("cpu"), t_sec=30, k=10).score(images, batch_size=2)
    ours = Scorer(model, t_sec=30, k=10, device="cpu", fast_layers=False).score(images)
    np.testing.assert_allclose(baseline, ours, rtol=1e-4)


def test_flop_count_of_the_cifar10_unet_is_the_known_figure():
    model, description = benchmark.build_model("cifar10")
    assert abs(description["parameters"] / 1e6 - 35.7) < 0.05
    assert abs(benchmark.unet_flops_per_image(model, torch.device("cpu")) / 1e9 - 12.44) < 0.05


def test_batch_size_and_list_parsing():
    assert parse_batch_sizes("16,64", ["demo", "cifar10"]) == {"demo": [16, 64], "cifar10": [16, 64]}
    assert parse_batch_sizes("demo=16,64;cifar10=8", ["demo"]) == {"demo": [16, 64], "cifar10": [8]}
    assert parse_batch_sizes(None, ["demo"]) is None
    for bad in ("16,x", "demo=0", "demo:16"):
        with pytest.raises(ConfigError):
            parse_batch_sizes(bad, ["demo"])
    with pytest.raises(ConfigError, match="models"):
        build_options(models="demo,imagenet", batch_sizes=None, precisions="fp32", device="cpu", threads=None,
                      rounds=None, batches_per_job=None, quick=True, direct=True, slow_bf16=False, vote=False,
                      bag=False, matmul=False)
    options = build_options(models="demo", batch_sizes="4", precisions="auto,fp32", device="cpu", threads=1,
                            rounds=1, batches_per_job=None, quick=True, direct=False, slow_bf16=False, vote=False,
                            bag=False, matmul=False)
    assert options.batch_sizes["demo"] == [4] and options.precisions == ["auto", "fp32"] and options.rounds == 1


def test_variants_do_not_time_auto_twice_and_skip_emulated_bf16_on_big_models(monkeypatch):
    options = benchmark.BenchOptions(precisions=["auto", "fp32", "bf16"])
    monkeypatch.setattr("qmia_fast.precision.cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr("qmia_fast.precision.cpu_bf16_speedup", lambda: None)
    variants, notes = benchmark.scoring_variants(options, "cifar10", torch.device("cpu"))
    assert set(variants) == {"auto", "fp32-direct"}
    assert any("same as auto" in n for n in notes) and any("emulates bf16" in n for n in notes)
    variants, _ = benchmark.scoring_variants(options, "demo", torch.device("cpu"))
    assert set(variants) == {"auto", "bf16", "fp32-direct"}


def test_cli_smoke_run_writes_json_and_prints_the_table(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--models", "demo", "--batch-sizes", "2", "--rounds", "1",
                                      "--precisions", "fp32", "--no-bag", "--no-matmul", "--no-vote",
                                      "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    row = report["scoring"][0]
    assert row["model"] == "demo" and row["batch_size"] == 2 and row["unet_calls_per_image"] == 11
    assert {"baseline", "fp32", "fp32-direct"} == set(row["results"])
    for key, entry in row["results"].items():
        assert entry["images_per_s_wall"] > 0 and len(entry["seconds_wall"]) == 1
        if key != "baseline":
            # No bound on the score difference: an under-trained demo target's t-errors are float32
            # rounding noise, on which any two implementations differ completely.
            assert entry["ratio_wall"] > 0 and np.isfinite(entry["max_rel_diff_vs_baseline"])
    assert report["environment"]["torch_threads"] == 1
    assert "baseline" in result.output and "fp32-direct" in result.output


def test_vote_and_table_pieces():
    vote = benchmark.bench_vote(n=1000, n_models=3, repeats=1)
    assert vote["kernel_s"] > 0 and vote["numpy_s"] > 0
    table = benchmark.format_table({"options": {"t_sec": 100, "k": 10}, "environment": {}, "vote": vote})
    assert "vote (1000 x 3)" in table


def test_bad_cli_values_are_one_line_errors():
    result = CliRunner().invoke(cli, ["bench", "--batch-sizes", "x"])
    assert result.exit_code != 0
