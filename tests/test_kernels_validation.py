"""Bad inputs to the kernels: a QmiaError naming the argument and the fix, never a crash; hypothesis fuzzing."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmia_fast import kernels as K
from qmia_fast.kernels import reference as R
from qmia_fast.errors import ConfigError, InputError, QmiaError

X = torch.randn(5, 3, 4, 4)
E = torch.randn(5, 3, 4, 4)

BAD_CALLS = [
    # (call, error type, words the message must contain)
    (lambda: K.ddim_step(X.double(), E.double(), 1.0, 1.0), InputError, ["x", "float64", ".float()"]),
    (lambda: K.ddim_step(X, E.half(), 1.0, 1.0), InputError, ["eps", "float16", "eps.to(torch.float32)"]),
    (lambda: K.ddim_step(X, E[:, :2], 1.0, 1.0), InputError, ["eps", "shape", "(5, 2, 4, 4)"]),
    (lambda: K.ddim_step(X.int(), E.int(), 1.0, 1.0), InputError, ["x", "int32"]),
    (lambda: K.ddim_step(X, E, torch.ones(3), 1.0), InputError, ["c1", "[5]"]),
    (lambda: K.ddim_step(X, E, torch.ones(5, 1), 1.0), InputError, ["c1", "[5]"]),
    (lambda: K.ddim_step(X, E, float("nan"), 1.0), InputError, ["c1", "finite"]),
    (lambda: K.ddim_step(X, E, 1.0, torch.tensor([1.0, 2.0, math.inf, 0.0, 1.0])), InputError, ["c2", "finite"]),
    (lambda: K.ddim_step(X, E, torch.ones(5, dtype=torch.int64), 1.0), InputError, ["c1", "floating"]),
    (lambda: K.ddim_step(X, E, "0.5", 1.0), InputError, ["c1"]),
    (lambda: K.ddim_step(X, E, True, 1.0), InputError, ["c1", "bool"]),
    (lambda: K.ddim_step(X.numpy(), E, 1.0, 1.0), InputError, ["x", "torch.Tensor"]),
    (lambda: K.ddim_step(torch.tensor(1.0), torch.tensor(1.0), 1.0, 1.0), InputError, ["x", "dimension"]),
    (lambda: K.ddim_step(X.to("meta"), E.to("meta"), 1.0, 1.0), InputError, ["x", "meta"]),
    (lambda: K.ddim_step(X, E.to("meta"), 1.0, 1.0), InputError, ["eps", "meta", "eps.to('cpu')"]),
    (lambda: K.ddim_step(X.to_sparse(), E, 1.0, 1.0), InputError, ["x", "dense"]),
    (lambda: K.ddim_step_sqerr(X, E, 1.0, 1.0, X[:1]), InputError, ["ref", "shape"]),
    (lambda: K.eps_sq_error(torch.randn(3, 4, dtype=torch.complex64), seed=1), InputError, ["eps_pred", "complex"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=-1), ConfigError, ["seed", "2**63"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=2**63), ConfigError, ["seed", "2**63"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=1.5), ConfigError, ["seed", "integer"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=None), ConfigError, ["seed", "integer"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=1, offset=-1), ConfigError, ["offset", ">= 0"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=1, offset=2**63 - 2), ConfigError, ["offset", "2**63"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=1, stream=-1), ConfigError, ["stream"]),
    (lambda: K.noise_inject(X, 1.0, 1.0, seed=1, stream=2**32), ConfigError, ["stream", "2**32"]),
    (lambda: K.eps_sq_error(X, seed=1, stream="0"), ConfigError, ["stream", "integer"]),
    (lambda: K.philox_normal((-1, 3), seed=1), InputError, ["shape", "negative"]),
    (lambda: K.philox_normal((), seed=1), InputError, ["shape", "dimension"]),
    (lambda: K.philox_normal("abc", seed=1), InputError, ["shape"]),
    (lambda: K.philox_normal((2, 3), seed=1, dtype=torch.float64), InputError, ["dtype", "float32"]),
    (lambda: K.philox_normal((2, 3), seed=1, device="gpu7"), InputError, ["device"]),
    (lambda: K.philox_normal((2, 3), seed=1, device="meta"), InputError, ["device", "meta"]),
    (lambda: K.philox_uint32(-1, 2, seed=0), InputError, ["n_rows"]),
    (lambda: K.pnorm_error(X, E, p=0.0), ConfigError, ["p", "> 0"]),
    (lambda: K.pnorm_error(X, E, p=math.nan), ConfigError, ["p"]),
    (lambda: K.pnorm_error(X, E, p="4"), ConfigError, ["p"]),
    (lambda: K.vote(torch.zeros(3, 1), torch.zeros(2, 3)), InputError, ["scores", "1-d"]),
    (lambda: K.vote(torch.zeros(3), torch.zeros(2, 4)), InputError, ["thresholds", "[B, N]", ".T"]),
    (lambda: K.vote(torch.zeros(3), torch.zeros(3)), InputError, ["thresholds", "[B, N]"]),
    (lambda: K.vote(torch.zeros(3), torch.zeros(2, 3, dtype=torch.int64)), InputError, ["thresholds", "int64"]),
    (lambda: K.vote(torch.zeros(3), torch.zeros(2, 3, device="meta")), InputError, ["thresholds", "meta"]),
]


@pytest.mark.parametrize("call,error,words", BAD_CALLS, ids=[f"case{i}" for i in range(len(BAD_CALLS))])
def test_bad_inputs_raise_a_clear_qmia_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from {message!r}"


def test_cuda_tensors_without_the_cuda_module_are_an_input_error(monkeypatch):
    monkeypatch.setattr(K.dispatch, "_cuda", None)
    with pytest.raises(InputError, match=r"x0 is on cuda:0 .*\.cpu\(\)"):
        K.dispatch._backend(torch.device("cuda", 0), "x0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_a_gpu_is_an_input_error():
    # Either message is right: no GPU, or (in a build without nvcc) no CUDA module either.
    with pytest.raises(InputError, match="no CUDA device|without its CUDA module"):
        K.philox_normal((2, 3), seed=1, device="cuda")


def test_the_compiled_core_checks_again():
    # Called directly (bypassing the wrappers), the C++ side raises ValueError, not a crash.
    core = K.dispatch._cpu
    with pytest.raises(ValueError, match="null pointer"):
        core.philox_normal(0, 0, 5, 4, 0, 1, 1, 0, 0, 0, 0)
    out = torch.empty(20)
    with pytest.raises(ValueError, match="dtype code"):
        core.philox_normal(out.data_ptr(), 9, 5, 4, 0, 1, 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        core.philox_normal(out.data_ptr(), 0, -5, 4, 0, 1, 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="channels"):
        core.eps_sq_error(out.data_ptr(), out.data_ptr(), 0, 1, 20, 1, 3, 5, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="p must be"):
        core.pnorm_error(out.data_ptr(), out.data_ptr(), out.data_ptr(), 0, 1, 20, 0, 1, 1, -2.0)
    with pytest.raises(ValueError, match="null pointer"):
        core.vote(out.data_ptr(), out.data_ptr(), 3, 4, 2, 1, 4, 1, 0, 0, 0)
    with pytest.raises(TypeError):  # pybind11 refuses a negative address or an out-of-range stream
        core.philox_uint32(-1, 1, 1, 0, 0, 0)
    with pytest.raises(TypeError):
        core.philox_uint32(out.data_ptr(), 1, 1, 0, 0, 2**32)


# ---- fuzzing ----------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.bool]
VALID = {torch.float32, torch.bfloat16, torch.float16}


@st.composite
def tensors(draw):
    dims = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    base = (torch.randn(dims, generator=g) * 3).to(dtype) if dims else torch.tensor(1.0).to(dtype)
    view = draw(st.sampled_from(["plain", "slice", "transpose", "channels_last", "expand"]))
    if view == "slice" and base.dim() >= 1 and base.shape[-1] > 1:
        base = base[..., ::2]
    elif view == "transpose" and base.dim() >= 2:
        base = base.transpose(-1, -2)
    elif view == "channels_last" and base.dim() == 4:
        base = base.contiguous(memory_format=torch.channels_last)
    elif view == "expand" and base.dim() >= 1 and base.shape[0] == 1:
        base = base.expand(3, *base.shape[1:])
    return base


def coefficients(n):
    return st.one_of(
        st.floats(-3, 3),
        st.sampled_from([math.nan, math.inf]),
        st.just(torch.linspace(0.1, 0.9, max(n, 1))[:n]),
        st.just(torch.ones(n + 1)),
        st.just(torch.ones(n, dtype=torch.int32)),
        st.just(torch.tensor(0.5, dtype=torch.float64)),
    )


def _run_or_qmia_error(fn):
    try:
        return fn()
    except QmiaError:
        return None


def _close_to_reference(out, ref64, dtype):
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), ref64, rtol=tol, atol=tol)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(x=tensors(), y=tensors(), data=st.data())
def test_fuzz_elementwise_wrappers(x, y, data):
    n = x.shape[0] if x.dim() else 0
    c1 = data.draw(coefficients(n))
    c2 = data.draw(coefficients(n))
    valid = (x.dtype in VALID and x.dim() >= 1 and y.dtype == x.dtype and y.shape == x.shape
             and all(not isinstance(c, torch.Tensor) or (c.is_floating_point() and c.dim() == 0)
                     or (c.is_floating_point() and c.shape == (n,)) for c in (c1, c2))
             and all(isinstance(c, torch.Tensor) or math.isfinite(c) for c in (c1, c2)))
    out = _run_or_qmia_error(lambda: K.ddim_step(x, y, c1, c2))
    assert (out is not None) == valid
    if out is not None:
        _close_to_reference(out, R.ddim_step_reference(x, y, torch.as_tensor(c1).float(),
                                                       torch.as_tensor(c2).float()), x.dtype)
    sq = _run_or_qmia_error(lambda: K.ddim_step_sqerr(x, y, c1, c2, y))
    assert (sq is not None) == valid
    if sq is not None:
        ref = R.ddim_step_sqerr_reference(x, y, torch.as_tensor(c1).float(), torch.as_tensor(c2).float(), y)
        torch.testing.assert_close(sq.double(), ref, rtol=1e-4, atol=1e-4)
    p = data.draw(st.sampled_from([1.0, 2.0, 4.0, 0.7, 0.0, -1.0]))
    pn = _run_or_qmia_error(lambda: K.pnorm_error(x, y, p))
    same_kind = x.dtype in VALID and x.dim() >= 1 and y.dtype == x.dtype and y.shape == x.shape
    assert (pn is not None) == (same_kind and p > 0)
    if pn is not None:
        torch.testing.assert_close(pn.double(), R.pnorm_error_reference(x, y, p), rtol=1e-4, atol=1e-4)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(x=tensors(), data=st.data())
def test_fuzz_noise_wrappers(x, data):
    n = x.shape[0] if x.dim() else 0
    a = data.draw(coefficients(n))
    seed = data.draw(st.one_of(st.integers(-5, 2**64 + 5), st.integers(2**63 - 5, 2**63 + 5), st.integers(0, 10)))
    offset = data.draw(st.one_of(st.integers(-3, 100), st.integers(2**63 - 10, 2**63 + 10)))
    stream = data.draw(st.integers(-2, 2**32 + 2))
    result = _run_or_qmia_error(lambda: K.noise_inject(x, a, 0.5, seed, offset, True, stream))
    keys_ok = 0 <= seed < 2**63 and 0 <= offset and offset + n <= 2**63 and 0 <= stream < 2**32
    if result is not None:
        assert keys_ok and x.dtype in VALID
        x_t, eps = result
        assert x_t.shape == x.shape and eps.dtype == x.dtype
        assert torch.equal(eps, K.philox_normal(x.shape, seed, offset, dtype=x.dtype, stream=stream))
    sums = _run_or_qmia_error(lambda: K.eps_sq_error(x, seed, offset, stream))
    assert (sums is not None) == (keys_ok and x.dtype in VALID and x.dim() >= 1)
    if sums is not None and x.numel() < 2000:
        torch.testing.assert_close(sums.double(), R.eps_sq_error_reference(x, seed, offset, stream),
                                   rtol=1e-5, atol=1e-6)


@settings(deadline=None)
@given(n=st.integers(0, 40), b=st.integers(0, 9), data=st.data())
def test_fuzz_vote(n, b, data):
    score_dtype = data.draw(st.sampled_from(DTYPES))
    threshold_dtype = data.draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(n * 10 + b)
    scores = torch.randint(-2, 3, (n,), generator=g).to(score_dtype)
    thresholds = torch.randint(-2, 3, (n, b), generator=g).to(threshold_dtype).T  # strided [B, N]
    result = _run_or_qmia_error(lambda: K.vote(scores, thresholds))
    floats = {torch.float32, torch.float64, torch.bfloat16, torch.float16}
    assert (result is not None) == (score_dtype in floats and threshold_dtype in floats)
    if result is not None:
        votes, decision, margin = result
        ref_votes, ref_decision, ref_margin = R.vote_reference(scores, thresholds)
        assert torch.equal(votes, ref_votes) and torch.equal(decision, ref_decision)
        torch.testing.assert_close(margin.double(), ref_margin, rtol=1e-6, atol=1e-6, equal_nan=True)
