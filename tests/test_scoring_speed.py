"""The scorer's speed paths give the plain path's scores: thread settings, memory formats, cached timesteps, CUDA graphs with new offsets, no host sync."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qmia_fast.kernels import dispatch
from qmia_fast.plan import resolve_precision
from qmia_fast.scoring import Scorer, default_unet_batch, score

from model_helpers import random_images, tiny_model


images = random_images


def test_threads_option_sets_and_restores_torch_threads(tmp_path, monkeypatch):
    """Every call of the run at `threads`, the plan's first-time probes (memory, timing) included: with a fresh plan
    cache they run here (with the session's cache they had run in an earlier test, which hid that the memory
    probe ran at torch's default)."""
    from qmia_fast import plan

    monkeypatch.setenv("QMIA_FAST_PLAN_CACHE", str(tmp_path / "plans.json"))
    monkeypatch.setattr(plan, "_BYTES_SEEN", {})
    model = tiny_model()
    before = torch.get_num_threads()
    seen = []
    original = model.forward

    def spy(x, t):
        seen.append(torch.get_num_threads())
        return original(x, t)

    model.forward = spy
    score(model, images(2), t_sec=20, k=10, device="cpu", threads=1)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    with pytest.raises(Exception, match="threads"):
        Scorer(model, device="cpu", threads=0)


@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_channels_last_gives_the_same_scores(method):
    model = tiny_model()
    imgs = images(5)
    kwargs = dict(method=method, t_sec=30, k=10, seed=2, device="cpu", batch_size=5)
    plain = score(model, imgs, channels_last=False, precision="fp32", fast_layers=False, **kwargs)
    cl = score(tiny_model(), imgs, channels_last=True, precision="fp32", fast_layers=False, **kwargs)
    # oneDNN picks other convolution kernels for the other layout: equal to float rounding.
    np.testing.assert_allclose(cl, plain, rtol=1e-4)


def test_timestep_tensors_are_made_once_per_batch_size_and_t():
    model = tiny_model()
    scorer = Scorer(model, "secmi", t_sec=30, k=10, batch_size=3, unet_batch=3, device="cpu")
    scorer.score(images(7))  # micro-batches of 3, 3 and 1 padded to 3
    assert set(scorer._timesteps) == {(3, t) for t in (0, 10, 20, 30)}
    first = scorer._timesteps[(3, 10)]
    scorer.score(images(3))
    assert scorer._timesteps[(3, 10)] is first


def test_small_kernels_run_on_one_thread_and_big_ones_on_torchs():
    assert dispatch._threads(1000) == 1
    assert dispatch._threads(1 << 22) == max(1, torch.get_num_threads())
    assert dispatch._threads() == max(1, torch.get_num_threads())


def test_defaults_per_device():
    assert default_unet_batch(torch.device("cpu")) >= 1
    assert default_unet_batch(torch.device("cuda")) >= default_unet_batch(torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_graphs_replay_at_new_offsets_and_match_eager(method):
    model = tiny_model()
    imgs = images(10)
    kwargs = dict(method=method, t_sec=30, k=10, seed=4, batch_size=8, unet_batch=4, device="cuda")
    eager = Scorer(model, cuda_graphs=False, **kwargs)
    graphed = Scorer(model, cuda_graphs=True, **kwargs)
    for offset in (0, 7, 2**40):
        np.testing.assert_array_equal(graphed.score(imgs, offset=offset), eager.score(imgs, offset=offset))
    # One graph for the micro-batch shape, however many offsets and micro-batches were scored.
    assert len(graphed._graphs) == 1
    if method == "loss":
        assert not np.array_equal(graphed.score(imgs, offset=0), graphed.score(imgs, offset=1))


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["secmi", "loss"])
def test_no_host_sync_inside_a_batch_once_captured(method):
    model = tiny_model()
    scorer = Scorer(model, method, t_sec=30, k=10, batch_size=4, unet_batch=4, device="cuda")
    scorer.score(images(4))  # capture
    raw = scorer._upload(images(4, seed=3))
    samples = torch.arange(12, 16, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = scorer._score_micro_batch(raw, samples, None, "pixels")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.shape == (4,)


def test_fast_layers_are_cpu_fp32_only():
    model = tiny_model()
    assert Scorer(model, device="cpu", precision="fp32", fast_layers=True).fast_layers
    assert not Scorer(model, device="cpu", precision="bf16").fast_layers
    assert not Scorer(model, device="cpu", precision="fp32", compile=True).fast_layers
    with pytest.raises(Exception, match="fast_layers"):
        Scorer(model, device="cpu", precision="bf16", fast_layers=True)
