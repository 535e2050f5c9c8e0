"""The same bits for a sample whatever batch size, thread count, position, subset or other images it is scored with (one run plan)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qmia_fast as qf
from qmia_fast.runtime import torch_threads

from model_helpers import random_images, tiny_model


@pytest.fixture(scope="module")
def demo():
    model = qf.load_model("builtin")
    images, _ = qf.load_data("builtin")
    return model, images[:70]


CASES = {  # what is varied -> keyword arguments of the call and how the call is made
    "batch size 1": dict(batch_size=1),
    "batch size 5": dict(batch_size=5),
    "batch size 63": dict(batch_size=63),
    "one thread": dict(threads=1),
    "two threads, batch 24": dict(threads=2, batch_size=24),
}


@pytest.mark.parametrize("method", ["loss", "secmi"])
@pytest.mark.parametrize("case", list(CASES))
def test_demo_scores_have_the_same_bits_however_they_are_batched(demo, method, case):
    model, images = demo
    settings = dict(method=method, t_sec=20, k=10, seed=3)
    reference = qf.Scorer(model, **settings).score(images)
    varied = CASES[case]
    with torch_threads(varied.get("threads")):
        got = qf.Scorer(model, **settings, batch_size=varied.get("batch_size")).score(images)
    np.testing.assert_array_equal(got, reference)


@pytest.mark.parametrize("method", ["secmi", "loss", "pia"])
def test_a_sample_keeps_its_bits_at_any_position_subset_or_offset(method):
    model = tiny_model(channels=3, size=8)
    imgs = random_images(11, channels=3)
    scorer = qf.Scorer(model, method, t_sec=30, k=10, seed=3, device="cpu", batch_size=4)
    everything = scorer.score(imgs)
    np.testing.assert_array_equal(scorer.score(imgs), everything)  # rerun: the same bits
    np.testing.assert_array_equal(scorer.score(imgs[4:], offset=4), everything[4:])  # noise keyed by global index
    picked = np.array([10, 1, 3, 7])
    np.testing.assert_array_equal(scorer.score(imgs[picked], indices=picked), everything[picked])
    np.testing.assert_array_equal(scorer.score(imgs[picked[:1]], indices=picked[:1]), everything[picked[:1]])


def test_the_unet_result_does_not_depend_on_position_or_padding_in_a_micro_batch(demo):
    """What the guarantee rests on (checked on the machine the tests run on): at one micro-batch size a sample's
    prediction has the same bits wherever it sits and whatever else (or padding) is in the micro-batch."""
    model, images = demo
    scorer = qf.Scorer(model, "loss", unet_batch=16)
    layout = torch.channels_last if scorer.channels_last else torch.contiguous_format
    with torch.inference_mode():
        x = scorer._prepare(torch.from_numpy(images[:16]), "pixels")
        reference = scorer.pred(x, 200, None, scorer.inversion)
        order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
        shuffled = scorer.pred(x[order].contiguous(memory_format=layout), 200, None, scorer.inversion)
        padded = torch.cat([x[:3], torch.zeros_like(x[3:])]).contiguous(memory_format=layout)
        alone = scorer.pred(padded, 200, None, scorer.inversion)
    assert torch.equal(shuffled, reference[order])
    assert torch.equal(alone[:3], reference[:3])
