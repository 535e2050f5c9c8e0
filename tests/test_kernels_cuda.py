"""CUDA kernels: bit-equal to the CPU core, on a non-default stream, under CUDA graph capture (skip without GPU)."""
from __future__ import annotations

import pytest
import torch

from qmia_fast import kernels as K
from model_helpers import STORAGE_DTYPES

pytestmark = pytest.mark.cuda

DTYPES = STORAGE_DTYPES
SHAPES = [(1, 1), (3, 7), (4, 1023), (8, 3, 32, 32), (2, 100003)]
SHAPE_IDS = ["D1", "D7", "D1023", "cifar", "D100003"]


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.view(torch.int32) if t.element_size() == 4 else t.view(torch.int16)


def _assert_bit_equal(gpu: torch.Tensor, cpu: torch.Tensor) -> None:
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    assert torch.equal(_bits(gpu), _bits(cpu))


def _data(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def test_philox_words_equal_the_cpu_words():
    _assert_bit_equal(K.philox_uint32(7, 300, 2**63 - 3, 2**40, 5, device="cuda"),
                      K.philox_uint32(7, 300, 2**63 - 3, 2**40, 5))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_kernel_is_bit_equal_to_the_cpu(dtype, shape):
    # The noise and every sum follow the same formulas and the same summation order on
    # both back ends (no FMA contraction, IEEE division/sqrt), so the bits are equal.
    n = shape[0]
    x, eps, ref = _data(shape, dtype, 1), _data(shape, dtype, 2), _data(shape, dtype, 3)
    a, b = torch.linspace(0.2, 0.9, n, dtype=torch.float64), torch.linspace(0.9, 0.3, n)
    gx, geps, gref = x.cuda(), eps.cuda(), ref.cuda()

    _assert_bit_equal(K.philox_normal(shape, 9, 4, device="cuda", dtype=dtype, stream=3),
                      K.philox_normal(shape, 9, 4, dtype=dtype, stream=3))
    g_xt, g_noise = K.noise_inject(gx, a, b.cuda(), seed=9, offset=4, return_noise=True, stream=3)
    c_xt, c_noise = K.noise_inject(x, a, b, seed=9, offset=4, return_noise=True, stream=3)
    _assert_bit_equal(g_xt, c_xt)
    _assert_bit_equal(g_noise, c_noise)
    _assert_bit_equal(K.eps_sq_error(gx, seed=9, offset=4, stream=3), K.eps_sq_error(x, seed=9, offset=4, stream=3))
    _assert_bit_equal(K.ddim_step(gx, geps, a, b), K.ddim_step(x, eps, a, b))
    _assert_bit_equal(K.ddim_step_sqerr(gx, geps, a, b, gref), K.ddim_step_sqerr(x, eps, a, b, ref))
    for p in (1.0, 2.0, 3.0, 4.0):
        _assert_bit_equal(K.pnorm_error(gx, gref, p), K.pnorm_error(x, ref, p))
    # A general p goes through powf, whose CUDA and glibc versions may differ by an ulp per term.
    torch.testing.assert_close(K.pnorm_error(gx, gref, 2.5).cpu(), K.pnorm_error(x, ref, 2.5), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_and_sliced_inputs_on_cuda(dtype):
    x, eps = _data((4, 3, 16, 20), dtype, 4), _data((4, 3, 16, 20), dtype, 5)
    gx, geps = x.cuda(), eps.cuda()
    cl = gx.contiguous(memory_format=torch.channels_last)
    out = K.noise_inject(cl, 0.7, 0.3, seed=2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    _assert_bit_equal(out, K.noise_inject(x, 0.7, 0.3, seed=2))
    _assert_bit_equal(K.eps_sq_error(cl, seed=2), K.eps_sq_error(x, seed=2))
    _assert_bit_equal(K.ddim_step_sqerr(cl, geps, 0.9, 0.1, gx), K.ddim_step_sqerr(x, eps, 0.9, 0.1, x))
    _assert_bit_equal(K.pnorm_error(gx[:, :, ::2], geps[:, :, ::2]), K.pnorm_error(x[:, :, ::2], eps[:, :, ::2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_vote_on_cuda_equals_cpu(dtype):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (3001,), generator=g).to(dtype)
    thresholds = torch.randint(0, 5, (3001, 7), generator=g).to(dtype).T
    for got, want in zip(K.vote(scores.cuda(), thresholds.cuda()), K.vote(scores, thresholds)):
        assert torch.equal(got.cpu(), want)


def test_kernels_run_on_a_non_default_stream():
    x, eps = _data((64, 3, 32, 32), torch.float32, 6).cuda(), _data((64, 3, 32, 32), torch.float32, 7).cuda()
    expected = (K.noise_inject(x, 0.6, 0.8, seed=3), K.eps_sq_error(x, seed=3), K.ddim_step_sqerr(x, eps, 1.1, 0.2, x))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = (K.noise_inject(x, 0.6, 0.8, seed=3), K.eps_sq_error(x, seed=3), K.ddim_step_sqerr(x, eps, 1.1, 0.2, x))
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_kernels_under_cuda_graph_capture():
    shape = (16, 3, 40, 40)  # 4800 elements per row: the two-kernel (workspace) reduction path
    static_x = _data(shape, torch.float32, 8).cuda()
    c1 = torch.linspace(0.9, 1.1, 16, device="cuda")
    c2 = torch.linspace(-0.1, 0.1, 16, device="cuda")

    def step():
        x_t = K.noise_inject(static_x, c1, c2, seed=11, offset=100, stream=1)
        loss = K.eps_sq_error(x_t, seed=11, offset=100, stream=1)
        sqerr = K.ddim_step_sqerr(x_t, static_x, c1, 0.5, static_x)
        return x_t, loss, sqerr

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (8, 9):
        static_x.copy_(_data(shape, torch.float32, seed).cuda())
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for got, want in zip(captured, eager):
            assert torch.equal(got, want)


def test_coefficients_from_any_device_and_dtype():
    x = _data((5, 3, 8, 8), torch.bfloat16, 9).cuda()
    on_cpu = K.ddim_step(x, x, torch.linspace(0, 1, 5, dtype=torch.float64), 0.5)
    on_gpu = K.ddim_step(x, x, torch.linspace(0, 1, 5, device="cuda", dtype=torch.float16).float(), 0.5)
    assert torch.equal(on_cpu, on_gpu)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device_and_current_device_is_kept():
    torch.cuda.set_device(0)
    x = _data((4, 3, 8, 8), torch.float32, 10).to("cuda:1")
    out = K.noise_inject(x, 0.5, 0.5, seed=1)
    assert out.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    _assert_bit_equal(out, K.noise_inject(x.cpu(), 0.5, 0.5, seed=1))
    _assert_bit_equal(K.philox_normal((2, 9), seed=1, device="cuda:1"), K.philox_normal((2, 9), seed=1))
