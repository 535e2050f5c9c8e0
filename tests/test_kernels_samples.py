"""Per-row sample indices for the noise kernels: the same bits as the scalar offset, each row keyed by its own index, graph replay with new indices."""
from __future__ import annotations

import pytest
import torch

from qmia_fast import kernels as K
from qmia_fast.kernels import reference as R
from qmia_fast.errors import ConfigError, InputError, QmiaError
from model_helpers import STORAGE_DTYPES

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = STORAGE_DTYPES


def _data(shape, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 9, 7), (2, 1, 70, 70)], ids=["2d", "4d", "two-chunks"])
def test_consecutive_samples_give_the_bits_of_the_offset(device, dtype, shape):
    offset = 2**33 + 5
    samples = torch.arange(shape[0], device=device) + offset
    x0 = _data(shape, dtype, 1, device)
    a = torch.linspace(0.5, 0.9, shape[0], device=device)
    assert torch.equal(K.philox_normal(shape, 7, offset=offset, device=device, dtype=dtype, stream=3),
                       K.philox_normal(shape, 7, device=device, dtype=dtype, stream=3, samples=samples))
    by_offset = K.noise_inject(x0, a, 0.3, 7, offset=offset, return_noise=True, stream=1)
    by_samples = K.noise_inject(x0, a, 0.3, 7, return_noise=True, stream=1, samples=samples)
    for want, got in zip(by_offset, by_samples):
        assert torch.equal(want, got)
    assert torch.equal(K.eps_sq_error(x0, 7, offset=offset, stream=2),
                       K.eps_sq_error(x0, 7, stream=2, samples=samples))


@pytest.mark.parametrize("device", DEVICES)
def test_each_row_gets_the_noise_of_its_own_sample_index(device):
    shape = (4, 3, 6, 5)
    samples = [17, 0, 2**40 + 1, 17]  # any order, repeats allowed
    got = K.philox_normal(shape, 5, device=device, samples=torch.tensor(samples, device=device))
    want = R.philox_normal_reference(shape, 5, samples=samples).float()
    assert torch.equal(got.cpu(), want)
    assert torch.equal(got[0], got[3])
    x0 = _data(shape, torch.float32, 2, device)
    got_sum = K.eps_sq_error(x0, 5, samples=torch.tensor(samples, device=device))
    want_sum = torch.cat([R.eps_sq_error_reference(x0[i:i + 1].cpu(), 5, offset=sample)
                          for i, sample in enumerate(samples)])
    torch.testing.assert_close(got_sum.cpu().double(), want_sum, rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_rows_with_samples(device):
    shape = (3, 4, 5, 6)
    x0 = _data(shape, torch.float32, 3, device)
    samples = torch.tensor([9, 4, 1], device=device)
    plain = K.noise_inject(x0, 0.7, 0.2, 1, samples=samples)
    channels_last = K.noise_inject(x0.contiguous(memory_format=torch.channels_last), 0.7, 0.2, 1, samples=samples)
    assert torch.equal(plain, channels_last.contiguous())


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda s: K.philox_normal((3, 4), 0, offset=1, samples=s), ConfigError, "either offset or samples"),
        (lambda s: K.philox_normal((3, 4), 0, samples=s.int()), InputError, "int64"),
        (lambda s: K.philox_normal((3, 4), 0, samples=s[:2]), InputError, "one sample index per row"),
        (lambda s: K.philox_normal((3, 4), 0, samples=s.reshape(3, 1)), InputError, "one sample index per row"),
        (lambda s: K.eps_sq_error(torch.zeros(3, 4), 0, samples=s - 1), InputError, "negative"),
        (lambda s: K.noise_inject(torch.zeros(3, 4), 1.0, 1.0, 0, samples=[0, 1, 2]), InputError, "torch.Tensor"),
    ],
)
def test_bad_samples_are_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call(torch.arange(3))
    assert issubclass(error, QmiaError)


def test_the_core_rejects_negative_indices_too():
    out = torch.empty(2, 4)
    bad = torch.tensor([0, -3])
    with pytest.raises(ValueError, match="negative"):
        K.dispatch._cpu.philox_normal(out.data_ptr(), 0, 2, 4, 0, 1, 1, 0, 0, bad.data_ptr(), 0, 1)


def test_strided_samples_are_made_contiguous():
    samples = torch.arange(10)[::3]  # 0, 3, 6, 9
    got = K.philox_normal((4, 8), 2, samples=samples)
    assert torch.equal(got, K.philox_normal((4, 8), 2, samples=samples.contiguous()))


@pytest.mark.cuda
def test_a_graph_replays_with_new_sample_indices():
    shape = (6, 3, 40, 40)  # 4800 elements per row: the workspace reduction path
    static_x = _data(shape, torch.float32, 4, "cuda")
    static_samples = torch.arange(6, device="cuda")

    def loss():
        x_t = K.noise_inject(static_x, 0.8, 0.6, seed=3, samples=static_samples)
        return K.eps_sq_error(x_t, seed=3, stream=1, samples=static_samples)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        loss()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = loss()
    for offset in (0, 1000, 2**35):
        static_samples.copy_(torch.arange(6, device="cuda") + offset)
        graph.replay()
        torch.cuda.synchronize()
        x_t = K.noise_inject(static_x, 0.8, 0.6, seed=3, offset=offset)
        assert torch.equal(captured, K.eps_sq_error(x_t, seed=3, stream=1, offset=offset))
