"""Counter-based noise: Philox bits vs the int64 reference, Box-Muller accuracy, keying, statistics, storage casts."""
from __future__ import annotations

import math

import pytest
import torch

from qmia_fast import kernels as K
from qmia_fast.kernels import reference as R
from model_helpers import STORAGE_DTYPES

DTYPES = STORAGE_DTYPES


def _ulp32(values: torch.Tensor) -> torch.Tensor:
    """float64 size of one float32 ulp at each value."""
    v = values.float().abs()
    return (torch.nextafter(v, torch.full_like(v, math.inf)) - v).double()


# ---- Philox words --------------------------------------------------------------------

@pytest.mark.parametrize(
    "counter,key,expected",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_reference_philox_matches_random123_known_answers(counter, key, expected):
    words = R.philox4x32_10_reference([torch.tensor([c]) for c in counter], key)
    assert tuple(int(w) for w in words) == expected


def test_kernel_philox_zero_key_is_the_known_answer():
    words = K.philox_uint32(1, 1, seed=0)
    assert words.flatten().tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize(
    "seed,offset,stream",
    [(0, 0, 0), (1, 5, 1), (2**63 - 1, 2**40 + 3, 2**32 - 1), (0x0123456789ABCDEF, 2**62, 7)],
)
def test_philox_uint32_equals_int64_reference_bit_for_bit(seed, offset, stream):
    got = K.philox_uint32(6, 37, seed, offset, stream)
    assert torch.equal(got, R.philox_uint32_reference(6, 37, seed, offset, stream))


# ---- Box-Muller ----------------------------------------------------------------------

def test_normals_are_the_correctly_rounded_exact_box_muller():
    # Tolerance: at most 1 float32 ulp from the float64 Box-Muller of the same words, and
    # all but a handful (ties closer than the float64 polynomial error) exactly equal.
    shape = (64, 3, 41, 41)  # 322,752 values, row length not a multiple of 4
    got = K.philox_normal(shape, seed=2024, offset=17, stream=3)
    exact = R.philox_normal_reference(shape, seed=2024, offset=17, stream=3)
    error_ulps = (got.double() - exact).abs() / _ulp32(exact)
    assert error_ulps.max().item() <= 1.0
    mismatches = (got != exact.float()).sum().item()
    assert mismatches <= 1e-4 * got.numel()


def test_normals_are_finite_at_the_extremes_of_u():
    # The most extreme words drawn over many rows: no inf/nan ever (u is never 0 or 1).
    z = K.philox_normal((1000, 4096), seed=99)
    assert torch.isfinite(z).all()
    assert z.abs().max().item() < 6.8  # sqrt(-2 ln 2^-33) = 6.76 is the largest possible radius


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_reduced_precision_noise_is_the_float32_noise_rounded(dtype):
    full = K.philox_normal((9, 3, 7, 5), seed=4, offset=2, stream=1)
    half = K.philox_normal((9, 3, 7, 5), seed=4, offset=2, stream=1, dtype=dtype)
    assert half.dtype == dtype
    assert torch.equal(half.view(torch.int16), full.to(dtype).view(torch.int16))


# ---- keying ----------------------------------------------------------------------------

def test_same_key_same_bits():
    a = K.philox_normal((5, 3, 8, 8), seed=123, offset=9, stream=2)
    b = K.philox_normal((5, 3, 8, 8), seed=123, offset=9, stream=2)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_rows_do_not_depend_on_batching():
    whole = K.philox_normal((10, 3, 5, 7), seed=77, offset=0)
    assert torch.equal(whole[3:5], K.philox_normal((2, 3, 5, 7), seed=77, offset=3))
    assert torch.equal(whole[9:], K.philox_normal((1, 3, 5, 7), seed=77, offset=9))
    shifted = K.philox_normal((4, 3, 5, 7), seed=77, offset=6)
    assert torch.equal(whole[6:10], shifted)


def test_row_prefix_does_not_depend_on_row_length():
    # Element e of a row is keyed by e alone: a longer row extends a shorter one.
    short = K.philox_normal((3, 10), seed=5)
    long = K.philox_normal((3, 23), seed=5)
    assert torch.equal(short, long[:, :10])


def test_stream_and_seed_give_independent_noise():
    base = K.philox_normal((64, 1024), seed=1, stream=0)
    other_stream = K.philox_normal((64, 1024), seed=1, stream=1)
    other_seed = K.philox_normal((64, 1024), seed=2, stream=0)
    high_seed = K.philox_normal((64, 1024), seed=1 + 2**32, stream=0)  # differs only in the key's high word
    for other in (other_stream, other_seed, high_seed):
        assert (base != other).float().mean().item() > 0.999
        corr = torch.corrcoef(torch.stack([base.flatten(), other.flatten()]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(base.numel())


def test_noise_is_keyed_by_the_logical_index_in_channels_last():
    x0 = torch.zeros(4, 3, 6, 5)
    plain = K.noise_inject(x0, 0.0, 1.0, seed=8, offset=1)
    channels_last = K.noise_inject(x0.contiguous(memory_format=torch.channels_last), 0.0, 1.0, seed=8, offset=1)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, channels_last.contiguous())
    assert torch.equal(plain, K.philox_normal((4, 3, 6, 5), seed=8, offset=1))


# ---- statistics ------------------------------------------------------------------------

def test_one_million_draws_look_standard_normal():
    n = 10**6
    z = K.philox_normal((1000, 1000), seed=31337).double().flatten()
    # 5-sigma bounds for mean, variance and the fourth moment of N(0, 1).
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < 5 * math.sqrt(2 / n)
    assert abs((z**4).mean().item() - 3.0) < 5 * math.sqrt(96 / n)
    # Kolmogorov-Smirnov distance to the normal CDF; 1.95/sqrt(n) is the 0.1% critical value.
    sorted_z, _ = torch.sort(z)
    cdf = 0.5 * (1 + torch.erf(sorted_z / math.sqrt(2)))
    ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = torch.maximum((ranks - cdf).abs(), (cdf - (ranks - 1 / n)).abs()).max().item()
    assert ks < 1.95 / math.sqrt(n)
    # Tails: P(|z| > 3) = 0.0026998.
    tail = (z.abs() > 3).double().mean().item()
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / n)


def test_neighbouring_elements_and_samples_are_uncorrelated():
    z = K.philox_normal((2000, 512), seed=9).double()
    bound = 5 / math.sqrt(z.numel())
    assert abs((z[:, 1:] * z[:, :-1]).mean().item()) < bound * 1.5  # within a Box-Muller pair and across
    assert abs((z[:, 2:] * z[:, :-2]).mean().item()) < bound * 1.5  # across the two pairs of one call
    assert abs((z[1:] * z[:-1]).mean().item()) < bound * 1.5  # across samples


# ---- storage conversions ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_every_16_bit_value_converts_like_torch(dtype):
    code = K.dispatch._STORAGE_CODES[dtype]
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    storage = bits.view(dtype)
    out = torch.empty(65536, dtype=torch.float32)
    K.dispatch._cpu.storage_to_float(storage.data_ptr(), out.data_ptr(), code, 65536)
    expected = storage.float()
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan].view(torch.int32), expected[~nan].view(torch.int32))


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_float_to_16_bit_rounds_like_torch(dtype):
    code = K.dispatch._STORAGE_CODES[dtype]
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    specials = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 2**-25, 1.5 * 2**-25, 2**-24, 1.5 * 2**-24,
                             2**-14, 6e-8, 1e-40, -1e-45, 3.4e38, float("inf"), -float("inf"), float("nan"),
                             1.00390625, 1.01171875, 1 + 2**-11, 1 + 3 * 2**-11])
    values = torch.cat([random_bits.view(torch.float32), specials.float(), torch.randn(10_000, generator=g)])
    # Values whose halfway cases sit exactly on the rounding boundary of the target type.
    halfway = torch.randint(0, 2**16, (20_000,), generator=g, dtype=torch.int64).to(torch.int32)
    shift = 16 if dtype == torch.bfloat16 else 13
    halfway_floats = ((halfway << shift) | (1 << (shift - 1))).view(torch.float32)
    values = torch.cat([values, halfway_floats]).contiguous()
    out = torch.empty(values.numel(), dtype=dtype)
    K.dispatch._cpu.float_to_storage(values.data_ptr(), out.data_ptr(), code, values.numel())
    expected = values.to(dtype)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(out[~nan].view(torch.int16), expected[~nan].view(torch.int16))


def test_baseline_and_avx2_builds_of_the_noise_loop_give_the_same_bits():
    # The CPU core picks an AVX2 build of its noise loop at run time where the CPU has it;
    # capping it at the baseline x86-64 build must not change a single bit.
    shape = (37, 3, 17, 19)
    best = K.philox_normal(shape, seed=6, offset=1, stream=2)
    sums = K.eps_sq_error(best * 0.5, seed=6, offset=1, stream=2)
    try:
        K.dispatch._cpu.force_simd_level(0)
        assert K.dispatch._cpu.simd_level() == "generic"
        baseline = K.philox_normal(shape, seed=6, offset=1, stream=2)
        baseline_sums = K.eps_sq_error(best * 0.5, seed=6, offset=1, stream=2)
    finally:
        K.dispatch._cpu.force_simd_level(-1)
    assert torch.equal(best.view(torch.int32), baseline.view(torch.int32))
    assert torch.equal(sums, baseline_sums)
