"""Fused kernels against float64 torch references: dtypes, edge sizes, per-sample coefficients, layouts, determinism.

Tolerances. Elementwise outputs (noise_inject, ddim_step) are computed in float32 and
rounded once to the storage dtype; the reference is float64 on the same (already
rounded) inputs. So |out - ref| <= u * |ref| + 8 * 2^-24 * scale + tiny, with u the unit
roundoff of the output dtype (2^-24 float32, 2^-8 bfloat16, 2^-11 float16), scale the
sum of the magnitudes of the two products, and tiny the smallest subnormal step.
Row sums are float32 terms accumulated in a fixed order: relative error <= 1e-5 for
every row length tested (up to 100,003 elements).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qmia_fast import kernels as K
from qmia_fast.kernels import reference as R
from model_helpers import STORAGE_DTYPES

DTYPES = STORAGE_DTYPES
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
TINY = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
SUM_RTOL = 1e-5

# N = 0, N = 1, odd row lengths, 1-D, a CIFAR-sized image and one row above 100k elements.
SHAPES = [(0, 3, 4, 4), (1, 1), (1, 3), (4, 7), (3, 1023), (5,), (2, 3, 64, 64), (1, 100003)]
SHAPE_IDS = ["N0", "D1", "D3", "D7", "D1023", "1d", "3x64x64", "D100003"]


def _data(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def _coefs(n, low, high):
    # float64 on purpose: the wrappers convert any float dtype to float32.
    return torch.linspace(low, high, max(n, 1), dtype=torch.float64)[:n]


def _assert_rounded_close(out, ref64, scale64, dtype):
    assert out.dtype == dtype
    bound = (UNIT_ROUNDOFF[dtype] * ref64.abs() * (1 + 2.0**-20)
             + 8 * 2.0**-24 * scale64 * (1 + UNIT_ROUNDOFF[dtype]) + TINY[dtype])
    err = (out.double() - ref64).abs()
    assert (err <= bound).all(), f"worst excess {(err - bound).max().item():.3g}"


def _assert_sums_close(out, ref64):
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref64, rtol=SUM_RTOL, atol=1e-30)


def _per_row(c, like):
    return torch.as_tensor(c, dtype=torch.float64).reshape((-1,) + (1,) * (like.dim() - 1))


# ---- each kernel against its reference ---------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noise_inject_matches_reference(dtype, shape, device):
    x0 = _data(shape, dtype, 1)
    a, b = _coefs(shape[0], 0.2, 0.99), _coefs(shape[0], 0.98, 0.1)
    x_t, eps = K.noise_inject(x0.to(device), a, b, seed=11, offset=5, return_noise=True, stream=2)
    x_t, eps = x_t.cpu(), eps.cpu()
    assert x_t.shape == x0.shape and eps.dtype == dtype
    assert torch.equal(eps, K.philox_normal(shape, 11, 5, dtype=dtype, stream=2))
    eps32 = R.philox_normal_reference(shape, 11, 5, 2).float()
    ref = R.noise_inject_reference(x0, a.float(), b.float(), 11, 5, 2, eps=eps32)
    scale = (_per_row(a.float(), x0) * x0.double()).abs() + (_per_row(b.float(), x0) * eps32.double()).abs()
    _assert_rounded_close(x_t, ref, scale, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_eps_sq_error_matches_reference(dtype, shape, device):
    pred = _data(shape, dtype, 2)
    out = K.eps_sq_error(pred.to(device), seed=3, offset=7, stream=1).cpu()
    assert out.shape == (shape[0],)
    _assert_sums_close(out, R.eps_sq_error_reference(pred, 3, 7, 1))


def test_eps_sq_error_of_the_injected_noise_is_zero():
    x0 = torch.randn(6, 3, 9, 9)
    _, eps = K.noise_inject(x0, 0.5, 0.5, seed=21, offset=40, return_noise=True, stream=4)
    assert torch.equal(K.eps_sq_error(eps, seed=21, offset=40, stream=4), torch.zeros(6))
    assert (K.eps_sq_error(eps, seed=21, offset=41, stream=4) > 0).all()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ddim_step_matches_reference(dtype, shape, device):
    x, eps = _data(shape, dtype, 3), _data(shape, dtype, 4)
    c1, c2 = _coefs(shape[0], 1.01, 1.3), _coefs(shape[0], -0.2, -0.05)
    out = K.ddim_step(x.to(device), eps.to(device), c1, c2).cpu()
    ref = R.ddim_step_reference(x, eps, c1.float(), c2.float())
    scale = (_per_row(c1.float(), x) * x.double()).abs() + (_per_row(c2.float(), x) * eps.double()).abs()
    _assert_rounded_close(out, ref, scale, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ddim_step_sqerr_matches_reference(dtype, shape, device):
    x, eps, ref = _data(shape, dtype, 5), _data(shape, dtype, 6), _data(shape, dtype, 7)
    c1, c2 = _coefs(shape[0], 0.9, 1.1), _coefs(shape[0], 0.3, -0.3)
    out = K.ddim_step_sqerr(x.to(device), eps.to(device), c1, c2, ref.to(device)).cpu()
    _assert_sums_close(out, R.ddim_step_sqerr_reference(x, eps, c1.float(), c2.float(), ref))


@pytest.mark.parametrize("p", [1.0, 2.0, 2.5, 3.0, 4.0])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pnorm_error_matches_reference(dtype, shape, p, device):
    a, b = _data(shape, dtype, 8), _data(shape, dtype, 9)
    _assert_sums_close(K.pnorm_error(a.to(device), b.to(device), p).cpu(), R.pnorm_error_reference(a, b, p))


def test_scalar_and_per_sample_coefficients_agree():
    x, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    by_number = K.ddim_step(x, eps, 0.8, 0.625)
    by_tensor = K.ddim_step(x, eps, torch.full((5,), 0.8), torch.full((5,), 0.625, dtype=torch.bfloat16))
    by_zero_dim = K.ddim_step(x, eps, torch.tensor(0.8), np.float32(0.625))
    assert torch.equal(by_number, by_tensor) and torch.equal(by_number, by_zero_dim)


def test_per_sample_coefficients_apply_to_their_own_row():
    x, eps = torch.randn(4, 10), torch.randn(4, 10)
    c1, c2 = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 0.5, -1.0, 2.0])
    out = K.ddim_step(x, eps, c1, c2)
    for i in range(4):
        assert torch.equal(out[i], K.ddim_step(x[i:i + 1], eps[i:i + 1], float(c1[i]), float(c2[i]))[0])


def test_empty_rows_sum_to_zero():
    empty = torch.zeros(3, 0)
    assert torch.equal(K.eps_sq_error(empty, seed=1), torch.zeros(3))
    assert torch.equal(K.pnorm_error(empty, empty), torch.zeros(3))
    assert torch.equal(K.ddim_step_sqerr(empty, empty, 1.0, 1.0, empty), torch.zeros(3))
    assert K.noise_inject(empty, 1.0, 1.0, seed=1).shape == (3, 0)
    assert K.ddim_step(empty, empty, 1.0, 1.0).shape == (3, 0)
    assert K.philox_normal((3, 0), seed=1).shape == (3, 0)


# ---- determinism ----------------------------------------------------------------------------

def _all_sums(x, eps, ref, offset):
    n = x.shape[0]
    c1, c2 = torch.linspace(0.5, 1.5, n), torch.linspace(-1, 1, n)
    return torch.stack([
        K.eps_sq_error(x, seed=5, offset=offset),
        K.ddim_step_sqerr(x, eps, c1, c2, ref),
        K.pnorm_error(x, ref, 4.0),
        K.pnorm_error(x, ref, 2.5),
    ])


@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (64, 9000)], ids=["cifar", "multi-chunk"])
def test_row_sums_do_not_depend_on_batch_or_threads(shape):
    x, eps, ref = _data(shape, torch.float32, 10), _data(shape, torch.float32, 11), _data(shape, torch.float32, 12)
    batch = _all_sums(x, eps, ref, offset=0)
    for i in (0, 17, 63):
        n = shape[0]
        c1, c2 = torch.linspace(0.5, 1.5, n)[i:i + 1], torch.linspace(-1, 1, n)[i:i + 1]
        alone = torch.stack([
            K.eps_sq_error(x[i:i + 1], seed=5, offset=i),
            K.ddim_step_sqerr(x[i:i + 1], eps[i:i + 1], c1, c2, ref[i:i + 1]),
            K.pnorm_error(x[i:i + 1], ref[i:i + 1], 4.0),
            K.pnorm_error(x[i:i + 1], ref[i:i + 1], 2.5),
        ])
        assert torch.equal(alone[:, 0], batch[:, i])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _all_sums(x, eps, ref, offset=0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, batch)
    assert torch.equal(_all_sums(x, eps, ref, offset=0), batch)


# ---- layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_inputs_give_the_contiguous_results(dtype):
    shape = (3, 5, 6, 7)
    x, eps, ref = _data(shape, dtype, 13), _data(shape, dtype, 14), _data(shape, dtype, 15)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, eps, ref)]
    assert not cl[0].is_contiguous()
    c1, c2 = torch.tensor([0.9, 1.0, 1.1]), torch.tensor([0.1, -0.2, 0.3])

    step = K.ddim_step(cl[0], cl[1], c1, c2)
    assert step.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(step, K.ddim_step(x, eps, c1, c2))
    injected = K.noise_inject(cl[0], c1, c2, seed=3, offset=2)
    assert injected.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(injected, K.noise_inject(x, c1, c2, seed=3, offset=2))
    assert torch.equal(K.eps_sq_error(cl[0], seed=3), K.eps_sq_error(x, seed=3))
    assert torch.equal(K.ddim_step_sqerr(*cl[:2], c1, c2, cl[2]), K.ddim_step_sqerr(x, eps, c1, c2, ref))
    assert torch.equal(K.pnorm_error(cl[0], cl[2]), K.pnorm_error(x, ref))
    # Mixed layouts: the others are brought to the first one's layout.
    assert torch.equal(K.ddim_step_sqerr(cl[0], eps, c1, c2, cl[2]), K.ddim_step_sqerr(x, eps, c1, c2, ref))
    assert torch.equal(K.pnorm_error(x, cl[2]), K.pnorm_error(x, ref))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sliced_and_transposed_inputs_give_the_contiguous_results(dtype):
    big = _data((6, 4, 10, 12), dtype, 16)
    other = _data((6, 4, 10, 12), dtype, 17)
    views = [
        (big[::2, :, 1:, ::3], other[::2, :, 1:, ::3]),
        (big.transpose(2, 3), other.transpose(2, 3)),
        (big[:, 1], other[:, 1]),
        (big.flatten(1)[:, ::7], other.flatten(1)[:, ::7]),
    ]
    for x, y in views:
        assert not x.is_contiguous()
        xc, yc = x.contiguous(), y.contiguous()
        n = x.shape[0]
        c1 = torch.linspace(0.5, 1.0, n)
        assert torch.equal(K.ddim_step(x, y, c1, 0.3), K.ddim_step(xc, yc, c1, 0.3))
        assert torch.equal(K.noise_inject(x, c1, 0.3, seed=1), K.noise_inject(xc, c1, 0.3, seed=1))
        assert torch.equal(K.eps_sq_error(x, seed=1), K.eps_sq_error(xc, seed=1))
        assert torch.equal(K.ddim_step_sqerr(x, y, c1, 0.3, y), K.ddim_step_sqerr(xc, yc, c1, 0.3, yc))
        assert torch.equal(K.pnorm_error(x, y), K.pnorm_error(xc, yc))


def test_lazily_negated_views_are_resolved():
    z = torch.complex(torch.randn(3, 8), torch.randn(3, 8))
    negated = z.conj().imag  # a real view with torch's negative bit set
    assert negated.is_neg()
    assert torch.equal(K.ddim_step(negated, torch.zeros(3, 8), 1.0, 0.0), -z.imag)


def test_expanded_and_grad_tensors_are_accepted():
    base = torch.randn(1, 3, 4, 4, requires_grad=True)
    x = base.expand(5, 3, 4, 4)  # stride 0 in the batch dimension
    out = K.ddim_step(x, x, 1.0, 1.0)
    assert not out.requires_grad
    torch.testing.assert_close(out, (2 * base).detach().expand(5, 3, 4, 4), rtol=0, atol=0)


# ---- vote -----------------------------------------------------------------------------------

def _numpy_vote(scores, thresholds):
    s = scores.double().numpy()
    t = thresholds.double().numpy()
    votes = (s[None, :] < t).sum(axis=0)
    margin = (t - s[None, :]).mean(axis=0) if t.shape[0] else np.full(s.shape, np.nan)
    return votes, 2 * votes > t.shape[0], margin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n_models", [1, 2, 7, 8])
def test_vote_matches_numpy_with_many_ties(dtype, n_models, device):
    g = torch.Generator().manual_seed(n_models)
    scores = torch.randint(0, 5, (1001,), generator=g).to(dtype)
    thresholds = torch.randint(0, 5, (n_models, 1001), generator=g).to(dtype)
    votes, decision, margin = (t.cpu() for t in K.vote(scores.to(device), thresholds.to(device)))
    # The margin is the bag's membership score: float64 for float64 inputs, float32 for the rest.
    margin_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert votes.dtype == torch.int32 and decision.dtype == torch.bool and margin.dtype == margin_dtype
    ref_votes, ref_decision, ref_margin = _numpy_vote(scores, thresholds)
    assert np.array_equal(votes.numpy(), ref_votes)
    assert np.array_equal(decision.numpy(), ref_decision)
    assert np.array_equal(margin.numpy(), ref_margin.astype(margin.numpy().dtype))


def test_vote_compares_in_the_promoted_dtype_and_takes_any_strides():
    scores = torch.tensor([1.0, 1.0 + 2**-40, 2.0], dtype=torch.float64)
    by_sample = torch.tensor([[1.0 + 2**-41, 1.0, 1.0]], dtype=torch.float64).T  # [N, B] from a regressor
    votes, decision, margin = K.vote(scores, by_sample.T)  # a transposed view, no copy needed
    assert votes.tolist() == [1, 0, 0] and decision.tolist() == [True, False, False]
    mixed = K.vote(scores.float(), torch.tensor([[1.5, 1.5, 1.5]], dtype=torch.float64))
    assert mixed[0].tolist() == [1, 1, 0]
    assert mixed[2].dtype == torch.float64 and mixed[2].tolist() == [0.5, 0.5, -0.5]


def test_vote_edge_cases():
    scores = torch.tensor([0.0, float("nan"), 1.0])
    votes, decision, margin = K.vote(scores, torch.empty(0, 3))
    assert votes.tolist() == [0, 0, 0] and decision.tolist() == [False] * 3 and torch.isnan(margin).all()
    votes, decision, margin = K.vote(torch.empty(0), torch.empty(5, 0))
    assert votes.shape == decision.shape == margin.shape == (0,)
    votes, decision, margin = K.vote(scores, torch.tensor([[1.0, 1.0, float("nan")]]))
    assert votes.tolist() == [1, 0, 0] and decision.tolist() == [True, False, False]
    assert margin[0].item() == 1.0 and math.isnan(margin[1].item()) and math.isnan(margin[2].item())


def test_vote_margin_of_float64_inputs_is_float64():
    # Scores 1e-12 apart: a float32 margin would make them one tie and move the exact ROC.
    scores = torch.tensor([0.5, 0.5 + 1e-12, 0.5 + 2e-12], dtype=torch.float64)
    thresholds = torch.tensor([[1.0, 1.0, 1.0], [0.25, 0.25, 0.25], [2.0 / 3.0] * 3], dtype=torch.float64)
    _, _, margin = K.vote(scores, thresholds)
    assert margin.dtype == torch.float64 and margin.unique().numel() == 3
    torch.testing.assert_close(margin, (thresholds - scores).mean(dim=0), rtol=0, atol=1e-15)


def test_vote_margin_accumulates_in_float64():
    scores = torch.full((2,), 1e8, dtype=torch.float32)
    thresholds = torch.tensor([[1e8 + 8.0, 1e8], [1e8 - 8.0, 1e8]], dtype=torch.float32).repeat(500, 1)
    _, _, margin = K.vote(scores, thresholds)
    assert margin.tolist() == [0.0, 0.0]
