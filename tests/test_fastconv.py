"""The float32 CPU layers (Winograd F(4x4, 3x3) convolution, NHWC GroupNorm) against float64 references, and the mode that routes calls to them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qmia_fast.kernels import winograd as W
from qmia_fast.kernels import dispatch as kernels
from qmia_fast.errors import InputError


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("shape", [(2, 32, 32, 7, 5), (3, 64, 48, 9, 13), (1, 32, 64, 4, 4), (2, 128, 128, 16, 16),
                                   (1, 33, 35, 1, 1), (2, 32, 32, 3, 17), (1, 40, 8, 6, 6)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("tiles_per_chunk", [1, 5, 128])
def test_winograd_matches_a_float64_convolution(shape, tiles_per_chunk):
    n, c, o, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(o, c, 3, 3, generator=g) * 0.1
    bias = torch.randn(o, generator=g)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    got = W.winograd_conv2d(x, W.winograd_weights(weight), bias, tiles_per_chunk=tiles_per_chunk)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    # Direct float32 is ~1e-7 from the exact value, Winograd a few 1e-6 (transform coefficients up to 8).
    assert _rel(got, ref) < 1e-5
    no_bias = W.winograd_conv2d(x, W.winograd_weights(weight), None, tiles_per_chunk=tiles_per_chunk)
    assert _rel(no_bias, F.conv2d(x.double(), weight.double(), None, padding=1)) < 1e-5


def test_winograd_is_deterministic_and_chunking_changes_only_rounding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, 10, 9, generator=g)
    u = W.winograd_weights(torch.randn(32, 32, 3, 3, generator=g))
    whole = W.winograd_conv2d(x, u, None, tiles_per_chunk=10**6)
    assert torch.equal(W.winograd_conv2d(x, u, None, tiles_per_chunk=10**6), whole)
    assert torch.equal(W.winograd_conv2d(x.contiguous(memory_format=torch.channels_last), u, None,
                                         tiles_per_chunk=10**6), whole)
    # The matrix library may block a product of another size differently: the same values up to
    # rounding (a few 1e-6 of the outputs' scale).
    scale = whole.abs().max().item()
    for chunk in (1, 7, 20):
        got = W.winograd_conv2d(x, u, None, tiles_per_chunk=chunk)
        torch.testing.assert_close(got, whole, rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(W.winograd_conv2d(x[1:2], u, None), whole[1:2], rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("shape,groups", [((2, 32, 28, 28), 32), ((3, 64, 7, 7), 32), ((2, 256, 16, 16), 32),
                                          ((1, 96, 5, 3), 32), ((2, 6, 1, 1), 3)])
def test_group_norm_matches_float64(shape, groups):
    g = torch.Generator().manual_seed(shape[1])
    x = (torch.randn(shape, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    ref = F.group_norm(x.double(), groups, gamma.double(), beta.double(), 1e-6)
    got = W.group_norm_nhwc(x, groups, gamma, beta, 1e-6)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=5e-6)
    plain = W.group_norm_nhwc(x, groups)
    torch.testing.assert_close(plain.double(), F.group_norm(x.double(), groups, eps=1e-5), rtol=0, atol=5e-6)


def test_mode_routes_eligible_calls_and_leaves_the_rest():
    torch.manual_seed(0)
    layers = nn.ModuleDict({
        "conv3": nn.Conv2d(32, 32, 3, padding=1),
        "strided": nn.Conv2d(32, 32, 3, stride=2, padding=1),
        "narrow": nn.Conv2d(3, 32, 3, padding=1),
        "pointwise": nn.Conv2d(32, 32, 1),
        "norm": nn.GroupNorm(32, 32),
    })
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(2, 3, 8, 8)
    mode = W.WinogradConvs()
    with torch.no_grad():
        expected = [layers["conv3"](x), layers["strided"](x), layers["narrow"](x3), layers["pointwise"](x),
                    layers["norm"](x), layers["norm"](x.contiguous())]
        with mode:
            got = [layers["conv3"](x), layers["strided"](x), layers["narrow"](x3), layers["pointwise"](x),
                   layers["norm"](x), layers["norm"](x.contiguous())]
    assert mode.calls == 1 and mode.group_norms == 1
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)
    # Autograd is left to torch.
    x_grad = x.clone().requires_grad_(True)
    with mode:
        layers["conv3"](x_grad).sum().backward()
    assert mode.calls == 1 and x_grad.grad is not None


def test_transformed_weights_follow_in_place_updates():
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 6, 6)
    mode = W.WinogradConvs()
    with torch.no_grad():
        with mode:
            conv(x)
            conv.weight.mul_(2.0)  # the cached transform is now stale
            after = conv(x)
        direct = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert mode.calls == 2
    torch.testing.assert_close(after, direct, rtol=1e-4, atol=1e-5)


def test_bad_arguments_are_errors_not_crashes():
    u = W.winograd_weights(torch.randn(32, 32, 3, 3))
    with pytest.raises(InputError, match="float32"):
        W.winograd_conv2d(torch.randn(1, 32, 4, 4, dtype=torch.float64), u)
    with pytest.raises(InputError, match="winograd_weights"):
        W.winograd_conv2d(torch.randn(1, 16, 4, 4), u)
    with pytest.raises(InputError, match="3 x 3"):
        W.winograd_weights(torch.randn(4, 4, 5, 5))
    with pytest.raises(InputError, match="divide"):
        W.group_norm_nhwc(torch.randn(1, 30, 2, 2), 32)
    core = kernels._cpu
    with pytest.raises(ValueError, match="tile range"):
        core.winograd_input_transform(0, 0, 1, 4, 4, 8, 0, 5)
    with pytest.raises(ValueError, match="null pointer"):
        core.winograd_output_transform(0, 0, 0, 1, 4, 4, 8, 0, 1)
    with pytest.raises(ValueError, match="groups"):
        core.group_norm_act(0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 6, 4, 1e-5, 0)


def test_empty_batches():
    u = W.winograd_weights(torch.randn(32, 32, 3, 3))
    assert W.winograd_conv2d(torch.randn(0, 32, 4, 4), u).shape == (0, 32, 4, 4)
    assert W.group_norm_nhwc(torch.randn(0, 32, 4, 4), 32).shape == (0, 32, 4, 4)


def test_group_norm_with_silu_matches_float64():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 64, 9, 7, generator=g) * 4).contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.randn(64, generator=g), torch.randn(64, generator=g)
    ref = F.silu(F.group_norm(x.double(), 32, gamma.double(), beta.double()))
    got = W.group_norm_nhwc(x, 32, gamma, beta, silu=True)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
