"""Smoke runs of the benchmark machinery and the bench/ harnesses in their CPU modes (seconds, no timing assertions)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qmia_fast import benchmark
from qmia_fast.cli import cli
from qmia_fast.benchmark.options import build_options, parse_batch_sizes, parse_variants
from qmia_fast.errors import ConfigError
from qmia_fast.scoring import Scorer

from model_helpers import tiny_model

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_script(name: str):
    """A bench/ script imported as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(**overrides):
    values = dict(models="demo", batch_sizes="2", precisions="fp32", device="cpu", threads=1, rounds=1,
                  batches_per_job=None, quick=True, direct=False, slow_bf16=False, vote=False, matmul=False)
    return build_options(**{**values, **overrides})


def test_reference_unet_runs_pytorch_ddpm_attention_with_the_same_weights(one_torch_thread):
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


def test_secmi_baselines_give_the_scorers_scores(one_torch_thread):
    model = tiny_model()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    ours = Scorer(model, t_sec=30, k=10, device="cpu", fast_layers=False, unet_batch=5).score(images)
    for strict in (False, True):
        baseline = benchmark.SecmiBaseline(model, torch.device("cpu"), t_sec=30, k=10, strict=strict)
        # A CPU has no TF32: the default and the strict loop are the same computation there.
        assert baseline.tf32 == {"cudnn": False, "matmul": False} and baseline.call_precision == "fp32"
        np.testing.assert_allclose(baseline.score(images, batch_size=2), ours, rtol=1e-4)


def test_flop_count_of_the_cifar10_unet_is_the_known_figure(one_torch_thread):
    model, description = benchmark.build_model("cifar10")
    assert abs(description["parameters"] / 1e6 - 35.7) < 0.05
    assert abs(benchmark.unet_flops_per_image(model, torch.device("cpu")) / 1e9 - 12.44) < 0.05


def test_peak_fraction_weighs_each_call_by_its_precisions_rate():
    matmul = {"fp32_gflops": 100.0, "bf16_gflops": 400.0}
    # 2 images x (9 bf16 + 2 fp32 calls) x 1 GFLOP: 9 * 2 / 400 + 2 * 2 / 100 = 0.085 s at the peak rates.
    assert benchmark.peak_fraction(0.17, 2, 1e9, [("bf16", 9), ("fp32", 2)], matmul) == pytest.approx(0.5)
    assert benchmark.peak_fraction(1.0, 1, 1e9, [("tf32", 1)], matmul) == pytest.approx(0.01)  # CPU: tf32 = fp32
    assert benchmark.peak_fraction(1.0, 1, 1e9, [("fp16", 1)], matmul) is None
    assert benchmark.peak_fraction(1.0, 1, 1e9, [("fp32", 1)], None) is None


def test_batch_size_variant_and_list_parsing():
    assert parse_batch_sizes("16,64", ["demo", "cifar10"]) == {"demo": [16, 64], "cifar10": [16, 64]}
    assert parse_batch_sizes("demo=16,64;cifar10=8", ["demo"]) == {"demo": [16, 64], "cifar10": [8]}
    assert parse_batch_sizes(None, ["demo"]) is None
    for bad in ("16,x", "demo=0", "demo:16"):
        with pytest.raises(ConfigError):
            parse_batch_sizes(bad, ["demo"])
    assert benchmark.parse_variant("fp16:fused") == {"precision": "fp16", "fused": True}
    assert benchmark.parse_variant("mixed-tf32:unfused") == {"precision": "mixed-tf32", "fused": False}
    assert benchmark.parse_variant("auto") == {"precision": "auto"}
    for bad in ("fp8", "fp16:fast", "fp16:", ":fused"):
        with pytest.raises(ConfigError, match="precision"):
            benchmark.parse_variant(bad)
    assert parse_variants(None) is None and parse_variants("auto, fp16:fused") == ["auto", "fp16:fused"]
    with pytest.raises(ConfigError, match="--precisions"):
        parse_variants("auto,half")
    with pytest.raises(ConfigError, match="models"):
        _options(models="demo,imagenet")
    options = _options(batch_sizes="4", precisions="auto,fp32")
    assert options.batch_sizes["demo"] == [4] and options.precisions == ["auto", "fp32"] and options.rounds == 1
    assert _options(precisions=None).precisions is None  # the device's defaults


def test_variants_are_timed_once_each_and_emulated_bf16_is_skipped_on_big_models(monkeypatch):
    monkeypatch.setattr("qmia_fast.machine.cpu_has_fast_bf16", lambda: False)
    cpu = torch.device("cpu")
    variants, notes = benchmark.scoring_variants(["auto", "fp32", "bf16"], cpu, skip_emulated_bf16=True,
                                                 direct_layers=True)
    assert set(variants) == {"auto", "fp32-direct"}
    assert any("fp32: the same as auto" in n for n in notes) and any("emulates bf16" in n for n in notes)
    variants, _ = benchmark.scoring_variants(["auto", "fp32", "bf16"], cpu, direct_layers=True)
    assert set(variants) == {"auto", "bf16", "fp32-direct"}
    # On a CPU tf32 runs as fp32 and mixed-tf32 as mixed; fusion is on by default there.
    variants, notes = benchmark.scoring_variants(["fp32", "tf32", "mixed", "mixed-tf32", "fp32:unfused",
                                                  "fp32:fused"], cpu)
    assert list(variants) == ["fp32", "mixed", "fp32:unfused"]
    assert {n.split(":")[0] for n in notes} == {"tf32", "mixed-tf32", "fp32"}


def test_cuda_variants_resolve_as_the_gpu_would(monkeypatch):
    # No GPU is needed to decide what each variant runs as on one.
    monkeypatch.setattr("qmia_fast.models.unet.FUSED_BY_DEFAULT", {"cpu": True, "cuda": False})
    variants, notes = benchmark.scoring_variants(list(benchmark.DEFAULT_VARIANTS["cuda"]), torch.device("cuda"))
    assert list(variants) == ["auto", "fp16:fused", "tf32", "mixed", "mixed-tf32", "fp32", "bf16"]
    assert notes == ["fp16:unfused: the same as auto here"]


def test_cli_smoke_run_writes_json_and_prints_the_table(tmp_path, one_torch_thread):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--models", "demo", "--batch-sizes", "2", "--rounds", "1",
                                      "--precisions", "fp32", "--no-matmul", "--no-vote", "--threads", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["models"][0]["model"] == "demo"
    row = report["scoring"][0]
    assert row["model"] == "demo" and row["batch_size"] == 2 and row["unet_calls_per_image"] == 11
    assert {"baseline", "fp32", "fp32-direct"} == set(row["results"])
    for key, entry in row["results"].items():
        assert entry["images_per_s_wall"] > 0 and len(entry["seconds_wall"]) == 1
        assert entry["matmul_peak_fraction"] is None  # --no-matmul
        if key != "baseline":
            assert entry["ratio_wall"] > 0 and np.isfinite(entry["max_rel_diff_vs_baseline"])
            assert "ratio_wall_strict" not in entry  # a CPU has no TF32: no second baseline
            assert entry["precision_resolved"] == "fp32" and entry["recomputed_fp32"] == 0
    # fp32's layout and convolutions are the run plan's (measured here); the GroupNorm runs fused on NHWC memory.
    assert row["results"]["fp32"]["fused"] is row["results"]["fp32"]["channels_last"]
    assert row["results"]["fp32-direct"]["fast_layers"] is False
    assert report["environment"]["torch_threads"] == 1
    assert "baseline" in result.output and "fp32-direct" in result.output and "of peak" in result.output


def test_run_reports_each_part_as_it_finishes_and_hooks_add_to_rows(one_torch_thread):
    seen = []
    options = _options(precisions="fp32", matmul=True)
    report = benchmark.run(options, on_update=lambda r: seen.append((r["complete"], len(r["scoring"]),
                                                                     "matmul" in r)),
                           on_case=lambda case: {"hook": sorted(case["scorers"])})
    assert seen[0] == (False, 0, True) and seen[-1] == (True, 1, True)
    assert report["scoring"][0]["hook"] == ["fp32"]
    entry = report["scoring"][0]["results"]["fp32"]
    assert entry["matmul_peak_fraction"] > 0
    table = benchmark.format_table(report)
    assert "matmul rates measured now: fp32" in table and "%" in table


def test_vote_and_table_pieces(one_torch_thread):
    vote = benchmark.bench_vote(n=1000, n_models=3, repeats=1)
    assert vote["kernel_s"] > 0 and vote["numpy_s"] > 0
    table = benchmark.format_table({"options": {"t_sec": 100, "k": 10}, "environment": {}, "vote": vote,
                                    "complete": False})
    assert "vote (1000 x 3)" in table and "incomplete" in table


def test_bad_cli_values_are_one_line_errors():
    for args in (["bench", "--batch-sizes", "x"], ["bench", "--precisions", "fp8"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_bench_scoring_script_adds_profiles_on_the_cpu(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "scoring.json"
    script = _bench_script("bench_scoring")
    script.main(["--models", "demo", "--batch-sizes", "2", "--rounds", "1", "--precisions", "auto",
                 "--no-matmul", "--no-vote", "--no-direct", "--threads", "1", "--profile", "--profile-top", "3",
                 "--out", str(out)])
    report = json.loads(out.read_text())
    profiles = report["scoring"][0]["profile"]
    assert set(profiles) == {"baseline", "auto"}
    for profile in profiles.values():
        assert 0 < len(profile["kernels"]) <= 3 and profile["kernel_total_us"] > 0
        assert profile["clock"].startswith("CPU")
    assert "top kernels: demo batch 2, auto" in capsys.readouterr().out


def test_a_failing_profile_is_recorded_and_the_row_kept():
    profile = _bench_script("kernel_profile")

    class Broken:
        def score(self, *args):
            raise RuntimeError("CUPTI unavailable")

    case = {"device": torch.device("cpu"), "batch": 2, "images": np.zeros((2, 1, 4, 4), np.uint8),
            "baselines": {"baseline": Broken()}, "scorers": {"auto": Broken()}, "variants": {}}
    result = profile.profiler_hook(["auto", "fp16:fused"])(case)["profile"]
    assert set(result) == {"baseline", "auto"} and result["auto"]["error"] == "RuntimeError: CUPTI unavailable"
    assert "CUPTI unavailable" in profile.format_profiles({"scoring": [{"model": "m", "batch_size": 2,
                                                                         "profile": result}]})


@pytest.mark.slow  # bf16 is emulated on most CPUs
def test_precision_table_script_runs_end_to_end_on_the_cpu(tmp_path, one_torch_thread):
    out = tmp_path / "precision.json"
    script = _bench_script("bench_secmi_precision")
    assert script.main(["--device", "cpu", "--members", "3", "--holdout", "3", "--variants", "auto,fp32,tf32",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["members"] == 3 and report["holdout"] == 3
    # tf32 runs as fp32 on a CPU; auto is what this CPU's plan measured (fp32 or mixed): never timed twice.
    assert "tf32: the same as " in " ".join(report["notes"]) and "tf32" not in report["runs"]
    assert list(report["runs"])[0] == "auto" and report["auto_resolves_to"] in ("fp32", "mixed")
    for run in report["runs"].values():
        assert {"median_rel_diff", "p95_rel_diff", "spearman", "auc", "auc_delta", "tpr_at_1%fpr",
                "verdict"} <= set(run)
    if report["auto_resolves_to"] == "fp32":  # then within float32 rounding of the reference
        assert report["runs"]["auto"]["median_rel_diff"] < 1e-4 and report["runs"]["auto"]["verdict"]["passes"]
    assert isinstance(report["auto_passes"], bool)
    verdict = script.verdict({"median_rel_diff": 0.02, "spearman": 0.9995, "auc_delta": 0.001})
    assert verdict == {"checks": {"median_rel_diff": False, "spearman": True, "auc": True}, "passes": False}


def test_gpu_summary_reads_partial_results_and_decides_only_on_what_is_there(tmp_path):
    summary = _bench_script("gpu_summary")
    xml = tmp_path / "tests.xml"
    xml.write_text('<testsuites><testsuite>'
                   '<testcase classname="tests.test_fused_group_norm" name="a"/>'
                   '<testcase classname="tests.test_fused_group_norm" name="b"><skipped/></testcase>'
                   '<testcase classname="tests.test_scoring" name="c"><failure message="boom">x</failure></testcase>'
                   '</testsuite></testsuites>')
    tests = summary.junit(str(xml))
    assert (tests["passed"], tests["skipped"], tests["failed"]) == (1, 1, 1)
    assert tests["failures"][0]["test"] == "tests.test_scoring::c" and tests["failures"][0]["message"] == "boom"
    assert "error" in summary.junit(str(tmp_path / "missing.xml"))

    out = tmp_path / "out"
    out.mkdir()
    (out / "cuda_tests.json").write_text(json.dumps(tests))
    result = {"images_per_s_wall": 100.0, "ratio_wall": 2.0, "precision_resolved": "fp16", "fused": False}
    bench = {"complete": False, "scoring": [{"model": "cifar10", "batch_size": 256, "results": {
        "baseline": {"images_per_s_wall": 50.0}, "auto": result,
        "fp16:fused": {**result, "images_per_s_wall": 110.0, "fused": True}}}]}
    (out / "bench_gpu.json").write_text(json.dumps(bench))
    stages = tmp_path / "stages.jsonl"
    stages.write_text('{"stage": "benchmark", "status": "timeout", "exit": 124, "seconds": 90, "limit": 90}\n')
    report = summary.summary(out, stages, 240, 200)
    assert report["stages"]["benchmark"]["status"] == "timeout"
    assert report["benchmark"]["fp16_fused_over_unfused"] == pytest.approx(1.1)
    assert report["benchmark"]["auto_meets_targets"] == {">= 3000 img/s": False, ">= 4x the plain loop": False}
    # No precision table: no flip recommended either way.
    assert report["decisions"]["flip_FUSED_BY_DEFAULT_cuda"]["flip"] is None
    (out / "secmi_precision.json").write_text(json.dumps({"complete": True, "runs": {"fp16:fused": {
        "verdict": {"passes": True}, "median_rel_diff": 0.003, "spearman": 0.9999, "auc_delta": 0.001,
        "precision_resolved": "fp16", "fused": True}}}))
    report = summary.summary(out, stages, 240, 200)
    assert report["decisions"]["flip_FUSED_BY_DEFAULT_cuda"]["flip"] is True


def test_the_table_explains_a_share_of_peak_over_100_percent():
    row = {"model": "cifar10", "batch_size": 16, "results": {"auto": {
        "precision_resolved": "fp32", "fused": True, "images_per_s_wall": 2.0, "images_per_s_cpu": 1.0,
        "ratio_wall": 1.5, "ratio_cpu": 1.5, "unet_gflops_wall": 250.0, "matmul_peak_fraction": 1.7,
        "max_rel_diff_vs_baseline": 1e-6}}}
    table = benchmark.format_table({"options": {"t_sec": 100, "k": 10}, "environment": {}, "scoring": [row]})
    assert "170%" in table and "can exceed 100%" in table


@pytest.mark.slow
def test_latent_and_dit_rows_run_against_a_plain_diffusers_loop_with_the_encode_timed_apart(tmp_path, one_torch_thread):
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "--models", "latent,dit", "--batch-sizes", "2", "--rounds", "1",
                                      "--precisions", "fp32", "--no-matmul", "--no-vote", "--no-direct",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for row in report["scoring"]:
        assert set(row["results"]) == {"baseline", "fp32"}
        # The same t-errors as the plain-diffusers loop, to float32 rounding.
        assert row["results"]["fp32"]["median_rel_diff_vs_baseline"] < 1e-3
        assert row["vae_encode_s_per_image"]["baseline"] > 0 and row["vae_encode_s_per_image"]["qmia"] > 0
    assert [m["model"] for m in report["models"]] == ["latent", "dit"]
    assert "diffusers" in report["models"][0]["baseline"]
