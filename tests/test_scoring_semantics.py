"""What the scores mean: under an ideal memoriser, members get (near) zero t-error, loss and PIA error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qmia_fast import metrics
from qmia_fast.models import EpsModel
from qmia_fast.schedule import linear_schedule
from qmia_fast.scoring import score


class IdealMemoriser(nn.Module):
    """The exact denoiser of the empirical distribution of `train`: a model that has memorised its data.

    E[x0 | x_t] is the softmax-weighted average of the training images with weights
    exp(-|x_t - sqrt(abar) x_m|^2 / (2 (1 - abar))), and eps follows from x_t and that x0.
    """

    def __init__(self, train: torch.Tensor, abar: np.ndarray):
        super().__init__()
        self.register_buffer("memorised", train.double())
        self.register_buffer("abar", torch.from_numpy(np.array(abar)))

    def forward(self, x, t):
        x = x.double()
        a = self.abar[t].view(-1, 1, 1, 1)
        distance = ((x[:, None] - a.sqrt()[:, None] * self.memorised[None]) ** 2).flatten(2).sum(-1)
        weights = torch.softmax(-distance / (2 * (1 - a.view(-1, 1))), dim=1)
        x0 = torch.einsum("nm,mchw->nchw", weights, self.memorised)
        return ((x - a.sqrt() * x0) / (1 - a).sqrt()).float()


@pytest.fixture(scope="module")
def memoriser_and_images():
    rng = np.random.default_rng(0)
    # Smooth random images (blurred noise) so that members and non-members look alike in kind.
    raw = rng.normal(size=(40, 1, 12, 12))
    kernel = np.ones((3, 3)) / 9.0
    smooth = np.stack([np.real(np.fft.ifft2(np.fft.fft2(img[0]) * np.fft.fft2(kernel, s=(12, 12))))
                       for img in raw])[:, None]
    images = np.clip((smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255, 0, 255).astype(np.uint8)
    members = images[:20]
    train = torch.from_numpy(members).double() / 255 * 2 - 1
    schedule = linear_schedule()
    model = EpsModel(IdealMemoriser(train, schedule.abar), schedule, (1, 12, 12), {"kind": "ideal"}, format="test")
    labels = np.r_[np.ones(20), np.zeros(20)]
    return model, images, labels


@pytest.mark.parametrize("method,kwargs", [("secmi", {}), ("loss", {"t": 50}), ("pia", {"t": 50})])
def test_members_of_an_ideal_memoriser_score_lower(memoriser_and_images, method, kwargs):
    model, images, labels = memoriser_and_images
    values = score(model, images, method=method, device="cpu", **kwargs)
    assert metrics.auc(-np.log(values), labels) == 1.0
    if method == "secmi":
        # The DDIM round trip is exact on the memorised trajectories.
        assert values[:20].max() < 1e-9 and np.median(values[20:]) > 1e-3
