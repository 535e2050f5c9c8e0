"""The run plan: one deterministic decision per machine and model architecture, recorded whole; small calls cheap, bits unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qmia_fast import machine, plan, plan_probe
from qmia_fast.errors import ConfigError
from qmia_fast.plan import resolve_plan
from qmia_fast.runtime import torch_threads
from qmia_fast.scoring import Scorer

from model_helpers import random_images, tiny_model

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh plan cache for the test."""
    path = tmp_path / "plans.json"
    monkeypatch.setenv(plan_probe.CACHE_ENV, str(path))
    plan._BYTES_SEEN.clear()
    return path


def fake_measurement(seconds: dict, invariant: bool = True):
    """measure_variants stand-in: the given seconds per image-call, every variant invariant or none."""
    calls = []

    def measure(model, unet_batch, rungs, build, variants=plan_probe.VARIANTS):
        calls.append(unet_batch)
        names = [v[0] for v in variants]
        return {"seconds_per_image_call": {name: seconds[name] for name in names},
                "micro_batch_invariant": {name: invariant for name in names}}
    measure.calls = calls
    return measure


FP32_WINOGRAD = {"fp32": 3.0, "fp32-nhwc": 2.5, "fp32-winograd": 1.0, "bf16": 2.0}
BF16_FASTEST = {"fp32": 3.0, "fp32-nhwc": 2.5, "fp32-winograd": 2.8, "bf16": 1.0}


def test_cpu_auto_is_measured_once_and_then_read_back_even_when_a_new_probe_would_disagree(cache, monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda: True)
    first = fake_measurement(BF16_FASTEST)
    monkeypatch.setattr(plan_probe, "measure_variants", first)
    model = tiny_model()
    a = resolve_plan(model, "loss", device="cpu")
    assert a.precision == "bf16" and first.calls == [64]
    assert resolve_plan(model, "secmi", device="cpu").precision == "mixed"
    # A second process would measure the opposite on a busy machine: the cached decision stands.
    second = fake_measurement(FP32_WINOGRAD)
    monkeypatch.setattr(plan_probe, "measure_variants", second)
    b = resolve_plan(model, "loss", device="cpu")
    assert second.calls == [] and b == a
    imgs = random_images(10)
    np.testing.assert_array_equal(Scorer(model, "loss", device="cpu").score(imgs),
                                  Scorer(model, "loss", device="cpu", plan=a).score(imgs))
    assert "measured on this machine" in a.decided["precision"] and str(cache) in a.decided["precision"]


def test_fp32_runs_the_fastest_float32_variant_measured(cache, monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(plan_probe, "measure_variants", fake_measurement(FP32_WINOGRAD))
    chosen = resolve_plan(tiny_model(), "secmi", device="cpu")
    assert (chosen.precision, chosen.fast_layers, chosen.channels_last) == ("fp32", True, True)
    plan._BYTES_SEEN.clear()
    cache.unlink()
    monkeypatch.setattr(plan_probe, "measure_variants", fake_measurement({**FP32_WINOGRAD, "fp32-winograd": 9.0}))
    chosen = resolve_plan(tiny_model(), "secmi", device="cpu")
    assert (chosen.fast_layers, chosen.channels_last) == (False, True)  # fp32-nhwc was fastest


def test_half_precision_must_win_by_the_margin(cache, monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(plan_probe, "measure_variants",
                        fake_measurement({"fp32": 1.1, "fp32-nhwc": 1.1, "fp32-winograd": 1.0, "bf16": 0.95}))
    assert resolve_plan(tiny_model(), "loss", device="cpu").precision == "fp32"


def test_without_a_cache_the_cpu_flags_decide_and_nothing_is_measured(monkeypatch):
    monkeypatch.setenv(plan_probe.CACHE_ENV, "off")
    monkeypatch.setattr(plan_probe, "measure_variants", lambda *a, **k: pytest.fail("measured without a cache"))
    for fast, expected in ((True, {"secmi": "mixed", "loss": "bf16"}), (False, {"secmi": "fp32", "loss": "fp32"})):
        monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda fast=fast: fast)
        for method, precision in expected.items():
            chosen = resolve_plan(tiny_model(), method, device="cpu")
            assert chosen.precision == precision and chosen.micro_batches == (chosen.unet_batch,)
    assert resolve_plan(tiny_model(), "loss", device="cpu", precision="fp32").fast_layers is True


def test_the_micro_batch_ladder_only_where_measured_bit_invariant(cache, monkeypatch):
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(plan_probe, "measure_variants", fake_measurement(FP32_WINOGRAD, invariant=True))
    assert resolve_plan(tiny_model(), "loss", device="cpu").micro_batches == (8, 16, 32, 64)
    cache.unlink()
    plan._BYTES_SEEN.clear()
    monkeypatch.setattr(plan_probe, "measure_variants", fake_measurement(FP32_WINOGRAD, invariant=False))
    assert resolve_plan(tiny_model(), "loss", device="cpu").micro_batches == (64,)


def test_a_few_images_cost_a_small_micro_batch_and_keep_their_bits(cache):
    """With the real measurement: where the ladder holds, 8 images run as one micro-batch of 8, with the bits
    they have inside a full micro-batch of 64 (where it does not hold, they are padded to 64, as before)."""
    model = tiny_model()
    imgs = random_images(70)
    scorer = Scorer(model, "loss", device="cpu")
    whole = scorer.score(imgs)
    calls = []
    for net in {id(n): n for n in scorer.networks.nets.values()}.values():
        net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    few = scorer.score(imgs[:8])
    np.testing.assert_array_equal(few, whole[:8])
    assert calls == [8 if len(scorer.plan.micro_batches) > 1 else 64]


def test_the_real_measurement_covers_every_variant_and_checks_invariance(cache):
    model = tiny_model()
    chosen = resolve_plan(model, "secmi", device="cpu", unet_batch=16)
    entry = plan_probe.cached(plan_probe.entry_key("variants", model, unet_batch=16))
    names = {v[0] for v in plan_probe.VARIANTS if v[1] != "bf16" or machine.cpu_has_fast_bf16()}
    assert set(entry["seconds_per_image_call"]) == names == set(entry["micro_batch_invariant"])
    assert all(value > 0 for value in entry["seconds_per_image_call"].values())
    assert chosen.precision in ("fp32", "mixed")


class _ThreadSensitiveNets:
    """A stand-in network whose small batches change their last bit at one thread (what oneDNN did on a Xeon)."""
    channels_last = False

    def __init__(self, unet_batch, sensitive=True):
        self.unet_batch, self.sensitive = unet_batch, sensitive

    def activate(self):
        pass

    def __call__(self, x, t, cond, call):
        out = x * 0.5
        if self.sensitive and x.shape[0] < self.unet_batch and torch.get_num_threads() == 1:
            out = torch.nextafter(out, torch.full_like(out, float("inf")))
        return out


def test_the_ladder_is_refused_where_a_small_batch_changes_bits_at_one_thread():
    """The regression: a ladder measured invariant at two threads gave other bits at one (CI, 2026-12-02)."""
    model = tiny_model()
    with torch_threads(2):
        entry = plan_probe.measure_variants(model, 16, (8,), lambda *a: _ThreadSensitiveNets(16),
                                            variants=(("fp32", "fp32", False, False),))
    assert entry["micro_batch_invariant"] == {"fp32": False}
    with torch_threads(2):
        steady = plan_probe.measure_variants(model, 16, (8,), lambda *a: _ThreadSensitiveNets(16, sensitive=False),
                                             variants=(("fp32", "fp32", False, False),))
    assert steady["micro_batch_invariant"] == {"fp32": True}


def test_unet_batch_is_bounded_by_the_machines_memory(cache, monkeypatch):
    monkeypatch.setattr(plan, "_total_memory", lambda dev: 64 << 20)  # a 64 MiB machine
    with pytest.raises(ConfigError, match="does not fit this machine's memory"):
        resolve_plan(tiny_model(), "loss", device="cpu", unet_batch=1_000_000)
    chosen = resolve_plan(tiny_model(), "loss", device="cpu")
    assert chosen.unet_batch < plan.DEFAULT_UNET_BATCH["cpu"] and "memory" in chosen.decided["unet_batch"]


def test_threads_reach_the_fit_and_the_plan_is_recorded_whole(cache):
    chosen = resolve_plan(tiny_model(), "loss", device="cpu", threads=1, precision="fp32", batch_size=100,
                          unet_batch=32)
    assert chosen.fit_threads == 1 and chosen.fit_device == "cpu" and chosen.batch_size == 128
    record = chosen.to_dict()
    assert record["micro_batches"][-1] == 32 and record["machine"]["cpu"] == machine.describe()["cpu"]
    assert {"precision", "unet_batch", "micro_batches", "fast_layers", "fused", "channels_last"} <= set(
        chosen.bit_identity())
    assert "threads" not in chosen.bit_identity() and "batch_size" not in chosen.bit_identity()
    assert chosen.describe().startswith("plan: cpu, fp32") and "\n" not in chosen.describe()


@pytest.mark.parametrize("kwargs,match", [
    ({"precision": "fp8"}, "precision"), ({"unet_batch": 0}, "unet_batch"), ({"batch_size": -1}, "batch_size"),
    ({"threads": 0}, "threads"), ({"fused": "yes"}, "fused"), ({"device": "tpu"}, "device"),
    ({"precision": "bf16", "fast_layers": True}, "fast_layers"),
])
def test_bad_plan_requests_are_one_line_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resolve_plan(tiny_model(), "loss", **kwargs)


def test_info_lists_the_measured_plans_and_clears_them(cache):
    from click.testing import CliRunner

    from qmia_fast.cli import cli

    resolve_plan(tiny_model(), "loss", device="cpu", unet_batch=16)
    shown = CliRunner().invoke(cli, ["info"])
    assert shown.exit_code == 0 and "1 measured on this machine" in shown.output
    assert "UNet on 3x8x8, micro-batch 16" in shown.output
    cleared = CliRunner().invoke(cli, ["info", "--clear-plans"])
    assert cleared.exit_code == 0 and not cache.exists()
