// Sanitizer-built test program for the CPU core: every kernel against plain scalar loops, edge sizes, all dtypes.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/ddim_step.h"
#include "common/group_norm.h"
#include "common/philox.h"
#include "common/row_reduce.h"
#include "common/storage_types.h"
#include "cpu/kernels_cpu.h"
#include "cpu/unet_layers_cpu.h"

using namespace qmia;

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

bool same_bits(float a, float b) { return float_bits(a) == float_bits(b); }

// Rows keyed by offset + row (the scalar form of SampleIndex).
SampleIndex at_offset(uint64_t offset) { return SampleIndex{nullptr, offset}; }

// ---- storage of test data in any dtype ------------------------------------------------

struct Buffer {
  int32_t dtype;
  std::vector<uint8_t> bytes;
  Buffer(int32_t dtype_code, int64_t n) : dtype(dtype_code), bytes(size_t(n) * element_size(dtype_code) + 1) {}
  static size_t element_size(int32_t code) { return code == kFloat32 ? 4 : (code == kFloat64 ? 8 : 2); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  float get(int64_t i) const {
    switch (dtype) {
      case kFloat32: return reinterpret_cast<const float*>(data())[i];
      case kBFloat16: return bf16_to_float(reinterpret_cast<const bf16_t*>(data())[i]);
      default: return f16_to_float(reinterpret_cast<const f16_t*>(data())[i]);
    }
  }
  void set(int64_t i, float v) {
    switch (dtype) {
      case kFloat32: reinterpret_cast<float*>(data())[i] = v; break;
      case kBFloat16: reinterpret_cast<bf16_t*>(data())[i] = float_to_bf16(v); break;
      default: reinterpret_cast<f16_t*>(data())[i] = float_to_f16(v); break;
    }
  }
};

Buffer random_buffer(int32_t dtype, int64_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  Buffer b(dtype, n);
  for (int64_t i = 0; i < n; ++i) b.set(i, normal(rng));
  return b;
}

float rounded(int32_t dtype, float v) {
  switch (dtype) {
    case kFloat32: return v;
    case kBFloat16: return bf16_to_float(float_to_bf16(v));
    default: return f16_to_float(float_to_f16(v));
  }
}

// The normal of logical element e of a row, straight from the formula.
float scalar_normal(uint64_t seed, uint64_t sample, uint32_t stream, int64_t e) {
  float n[4];
  philox_normal4(philox_key(seed), sample, stream, uint32_t(e / 4), n[0], n[1], n[2], n[3]);
  return n[e % 4];
}

// The fixed summation order of row_reduce.h, written as plainly as possible.
float ordered_row_sum(const std::function<float(int64_t)>& term, int64_t row_length) {
  double total = 0.0;
  for (int64_t start = 0; start < row_length; start += kReduceChunk) {
    std::vector<float> lanes(kReduceLanes, 0.0f);
    for (int k = 0; k < kReduceSteps; ++k)
      for (int m = 0; m < kReduceLanes; ++m) {
        const int64_t e = start + int64_t(k) * kReduceLanes + m;
        if (e < row_length) lanes[m] += term(e);
      }
    for (int s = kReduceLanes / 2; s >= 1; s /= 2)
      for (int m = 0; m < s; ++m) lanes[m] += lanes[m + s];
    total += double(lanes[0]);
  }
  return float(total);
}

bool throws_invalid(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return true;
  } catch (...) {
    return false;
  }
  return false;
}

const int32_t kDtypes[] = {kFloat32, kBFloat16, kFloat16};
const RowCoefficient kOne{nullptr, 1.0f};  // the same value for every row

RowCoefficient per_row(const std::vector<float>& values) { return RowCoefficient{values.data(), 0.0f}; }

// ---- tests ------------------------------------------------------------------------------

void test_philox_known_answers() {
  // Random123's published known-answer vectors for Philox4x32-10.
  struct Case {
    uint32_t ctr[4], key[2], out[4];
  } cases[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}, {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Case& c : cases) {
    const PhiloxWords w = philox4x32_10(c.ctr[0], c.ctr[1], c.ctr[2], c.ctr[3], c.key[0], c.key[1]);
    check(w.w0 == c.out[0] && w.w1 == c.out[1] && w.w2 == c.out[2] && w.w3 == c.out[3], "Philox known answer");
  }
  // The kernel's counter layout: (group, stream, sample low, sample high), key = seed halves.
  std::vector<uint32_t> words(3 * 5 * 4);
  const uint64_t seed = 0x0123456789ABCDEFull, offset = (uint64_t(1) << 33) + 7;
  cpu::philox_uint32(words.data(), 3, 5, seed, offset, 9, 2);
  bool ok = true;
  for (int i = 0; i < 3; ++i)
    for (int g = 0; g < 5; ++g) {
      const uint64_t sample = offset + i;
      const PhiloxWords w = philox4x32_10(g, 9, uint32_t(sample), uint32_t(sample >> 32), uint32_t(seed),
                                          uint32_t(seed >> 32));
      const uint32_t* got = &words[(i * 5 + g) * 4];
      ok = ok && got[0] == w.w0 && got[1] == w.w1 && got[2] == w.w2 && got[3] == w.w3;
    }
  check(ok, "philox_uint32 counter layout");
}

void test_box_muller_accuracy() {
  // Against libm in double precision on a sweep of words, with the exact angle reduction.
  double worst = 0.0;
  for (uint64_t w = 0; w < (uint64_t(1) << 32); w += 104729) {
    const uint32_t radius_word = uint32_t(w), angle_word = uint32_t(w * 2654435761u);
    float z_cos, z_sin;
    box_muller(radius_word, angle_word, z_cos, z_sin);
    const double u = (double(radius_word) + 0.5) * 0x1p-32;
    const uint32_t q = ((angle_word + 0x20000000u) >> 30) & 3u;
    const int32_t d = int32_t(angle_word - (q << 30));
    const double t = M_PI / 2 * (2.0 * d + 1) * 0x1p-31;
    const double c = std::cos(t), s = std::sin(t);
    const double cos_full = q == 0 ? c : q == 1 ? -s : q == 2 ? -c : s;
    const double sin_full = q == 0 ? s : q == 1 ? c : q == 2 ? -s : -c;
    const double r = std::sqrt(-2.0 * std::log(u));
    for (int k = 0; k < 2; ++k) {
      const double exact = r * (k ? sin_full : cos_full);
      const float got = k ? z_sin : z_cos;
      const float near = float(exact);
      const double ulp = double(std::nextafter(std::fabs(near), INFINITY)) - std::fabs(double(near));
      worst = std::max(worst, std::fabs(double(got) - exact) / ulp);
    }
  }
  check(worst <= 1.0, "Box-Muller within 1 ulp of the exact value (worst " + std::to_string(worst) + ")");
  float a, b;
  box_muller(0u, 0u, a, b);
  check(std::isfinite(a) && std::isfinite(b) && a > 6.7f && a < 6.8f, "smallest u gives the largest radius");
  box_muller(~0u, 0x40000000u, a, b);
  check(std::isfinite(a) && std::isfinite(b) && std::fabs(b) < 2e-5f, "largest u gives a tiny radius");
}

void test_storage_conversions() {
  bool round_trip = true;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const bf16_t h{uint16_t(bits)};
    const float v = bf16_to_float(h);
    if (!std::isnan(v)) round_trip = round_trip && float_to_bf16(v).bits == h.bits;
    const f16_t g{uint16_t(bits)};
    const float w = f16_to_float(g);
    if (!std::isnan(w)) round_trip = round_trip && float_to_f16(w).bits == g.bits;
    else round_trip = round_trip && std::isnan(f16_to_float(float_to_f16(w)));
  }
  check(round_trip, "every 16-bit value survives storage -> float -> storage");
  check(float_to_f16(65504.0f).bits == 0x7BFF, "65504 is the largest half");
  check(float_to_f16(65519.99f).bits == 0x7BFF, "just below 65520 rounds down");
  check(float_to_f16(65520.0f).bits == 0x7C00, "65520 rounds to infinity");
  check(float_to_f16(0x1p-25f).bits == 0x0000, "2^-25 ties to even zero");
  check(float_to_f16(0x1.8p-25f).bits == 0x0001, "1.5 * 2^-25 rounds up to the smallest subnormal");
  check(float_to_f16(0x1.8p-24f).bits == 0x0002, "1.5 * 2^-24 ties to even 2 * 2^-24");
  check(float_to_f16(-0.0f).bits == 0x8000, "negative zero keeps its sign");
  check(float_to_bf16(1.00390625f).bits == 0x3F80, "bfloat16 ties to even");
  check(float_to_bf16(std::numeric_limits<float>::quiet_NaN()).bits == 0x7FC0, "bfloat16 NaN stays NaN");
  check(float_to_bf16(0x1.FFFFFEp127f).bits == 0x7F80, "bfloat16 overflow to infinity");
}

void test_validation() {
  const RowLayout layout{8, 0, 1, 1};
  float out[8];
  check(throws_invalid([&] { cpu::philox_normal(nullptr, kFloat32, 1, layout, 0, at_offset(0), 0, 1); }),
        "null output with elements throws");
  check(throws_invalid([&] { cpu::philox_normal(out, 7, 1, layout, 0, at_offset(0), 0, 1); }),
        "unknown dtype throws");
  check(throws_invalid([&] { cpu::philox_normal(out, kFloat32, -1, layout, 0, at_offset(0), 0, 1); }),
        "negative n_rows");
  check(throws_invalid(
            [&] { cpu::philox_normal(out, kFloat32, 1, RowLayout{-3, 0, 1, 1}, 0, at_offset(0), 0, 1); }),
        "negative row_length");
  check(throws_invalid(
            [&] { cpu::philox_normal(out, kFloat32, 1, RowLayout{8, 1, 3, 2}, 0, at_offset(0), 0, 1); }),
        "inconsistent channels_last layout");
  check(throws_invalid(
            [&] { cpu::philox_normal(out, kFloat32, 2, layout, 0, at_offset(UINT64_MAX), 0, 1); }),
        "sample index overflow");
  check(throws_invalid([&] { cpu::pnorm_error(out, out, out, kFloat32, 1, layout, -1.0f, 1); }), "p <= 0");
  check(throws_invalid([&] {
          cpu::ddim_step(out, out, RowCoefficient{nullptr, NAN}, kOne, out, kFloat32, 1, 8, 1);
        }),
        "a non-finite scalar coefficient throws");
  check(throws_invalid([&] { cpu::vote(out, out, kFloat32, 2, 1, -1, 1, 1, nullptr, nullptr, nullptr, 1); }),
        "vote with null outputs");
  // n = 0: null pointers are fine and nothing is touched.
  bool quiet = true;
  try {
    cpu::philox_normal(nullptr, kFloat16, 0, layout, 0, at_offset(0), 0, 1);
    cpu::noise_inject(nullptr, kOne, kOne, nullptr, nullptr, kBFloat16, 0, layout, 1, at_offset(0), 0, 1);
    cpu::eps_sq_error(nullptr, nullptr, kFloat32, 0, layout, 1, at_offset(0), 0, 1);
    cpu::ddim_step(nullptr, nullptr, kOne, kOne, nullptr, kFloat32, 0, 8, 1);
    cpu::ddim_step_sqerr(nullptr, nullptr, kOne, kOne, nullptr, nullptr, kFloat16, 0, layout, 1);
    cpu::pnorm_error(nullptr, nullptr, nullptr, kFloat32, 0, layout, 4.0f, 1);
    cpu::vote(nullptr, nullptr, kFloat64, 0, 3, 1, 1, 1, nullptr, nullptr, nullptr, 1);
  } catch (...) {
    quiet = false;
  }
  check(quiet, "n = 0 with null pointers returns quietly");
}

// All kernels on one (dtype, n_rows, row_length) case against scalar loops.
void test_case(int32_t dtype, int64_t n_rows, int64_t row_length, std::mt19937& rng) {
  const std::string tag =
      std::string(dtype_name(dtype)) + " N=" + std::to_string(n_rows) + " D=" + std::to_string(row_length);
  const int64_t n = n_rows * row_length;
  const RowLayout layout{row_length, 0, 1, 1};
  const uint64_t seed = 0xDEADBEEFCAFEull, offset = 11;
  const uint32_t stream = 3;
  std::vector<float> coef_a(n_rows), coef_b(n_rows);
  for (int64_t i = 0; i < n_rows; ++i) {
    coef_a[i] = 0.5f + 0.1f * float(i);
    coef_b[i] = 1.0f - 0.05f * float(i);
  }

  // philox_normal and noise_inject: element for element.
  Buffer noise(dtype, n), x0 = random_buffer(dtype, n, rng), x_t(dtype, n), eps(dtype, n);
  cpu::philox_normal(noise.data(), dtype, n_rows, layout, seed, at_offset(offset), stream, 2);
  cpu::noise_inject(x0.data(), per_row(coef_a), per_row(coef_b), x_t.data(), eps.data(), dtype, n_rows, layout, seed,
                    at_offset(offset), stream, 2);
  bool noise_ok = true, inject_ok = true;
  for (int64_t i = 0; i < n_rows; ++i)
    for (int64_t e = 0; e < row_length; ++e) {
      const int64_t k = i * row_length + e;
      const float z = scalar_normal(seed, offset + i, stream, e);
      noise_ok = noise_ok && same_bits(noise.get(k), rounded(dtype, z)) && same_bits(eps.get(k), rounded(dtype, z));
      const float injected = affine_combine(coef_a[i], x0.get(k), coef_b[i], z);
      inject_ok = inject_ok && same_bits(x_t.get(k), rounded(dtype, injected));
    }
  check(noise_ok, "philox_normal and returned eps equal the scalar formula, " + tag);
  check(inject_ok, "noise_inject equals the scalar formula, " + tag);

  // eps_sq_error: the fixed order exactly, and close to a double sum.
  std::vector<float> sums(n_rows + 1);
  cpu::eps_sq_error(x0.data(), sums.data(), dtype, n_rows, layout, seed, at_offset(offset), stream, 2);
  bool order_ok = true, close_ok = true;
  for (int64_t i = 0; i < n_rows; ++i) {
    auto term = [&](int64_t e) {
      return squared_difference(x0.get(i * row_length + e), scalar_normal(seed, offset + i, stream, e));
    };
    order_ok = order_ok && same_bits(sums[i], ordered_row_sum(term, row_length));
    double exact = 0.0;
    for (int64_t e = 0; e < row_length; ++e) {
      const double d = double(x0.get(i * row_length + e)) - double(scalar_normal(seed, offset + i, stream, e));
      exact += d * d;
    }
    close_ok = close_ok && std::fabs(sums[i] - exact) <= 1e-5 * exact + 1e-30;
  }
  check(order_ok, "eps_sq_error follows the documented order bit for bit, " + tag);
  check(close_ok, "eps_sq_error within 1e-5 of the float64 sum, " + tag);

  // ddim_step and ddim_step_sqerr.
  Buffer x = random_buffer(dtype, n, rng), e_in = random_buffer(dtype, n, rng), ref = random_buffer(dtype, n, rng);
  Buffer step(dtype, n);
  cpu::ddim_step(x.data(), e_in.data(), per_row(coef_a), per_row(coef_b), step.data(), dtype, n_rows, row_length, 2);
  bool step_ok = true;
  for (int64_t i = 0; i < n_rows; ++i)
    for (int64_t e = 0; e < row_length; ++e) {
      const int64_t k = i * row_length + e;
      const float stepped = affine_combine(coef_a[i], x.get(k), coef_b[i], e_in.get(k));
      step_ok = step_ok && same_bits(step.get(k), rounded(dtype, stepped));
    }
  check(step_ok, "ddim_step equals the scalar formula, " + tag);
  cpu::ddim_step_sqerr(x.data(), e_in.data(), per_row(coef_a), per_row(coef_b), ref.data(), sums.data(), dtype, n_rows,
                       layout, 2);
  bool sqerr_ok = true;
  for (int64_t i = 0; i < n_rows; ++i) {
    auto term = [&](int64_t e) {
      const int64_t k = i * row_length + e;
      return ddim_step_sqerr_term(coef_a[i], x.get(k), coef_b[i], e_in.get(k), ref.get(k));
    };
    sqerr_ok = sqerr_ok && same_bits(sums[i], ordered_row_sum(term, row_length));
  }
  check(sqerr_ok, "ddim_step_sqerr follows the documented order bit for bit, " + tag);

  // pnorm_error for the fast powers and a general one.
  for (float p : {1.0f, 2.0f, 3.0f, 4.0f, 2.5f}) {
    cpu::pnorm_error(x.data(), ref.data(), sums.data(), dtype, n_rows, layout, p, 2);
    bool ok = true;
    for (int64_t i = 0; i < n_rows; ++i) {
      auto term = [&](int64_t e) {
        const int64_t k = i * row_length + e;
        return pnorm_term(x.get(k), ref.get(k), power_code(p), p);
      };
      ok = ok && same_bits(sums[i], ordered_row_sum(term, row_length));
    }
    check(ok, "pnorm_error p=" + std::to_string(p) + " follows the documented order, " + tag);
  }

  // Thread count never changes a sum.
  std::vector<float> one_thread(n_rows + 1), two_threads(n_rows + 1);
  cpu::eps_sq_error(x0.data(), one_thread.data(), dtype, n_rows, layout, seed, at_offset(offset), stream, 1);
  cpu::eps_sq_error(x0.data(), two_threads.data(), dtype, n_rows, layout, seed, at_offset(offset), stream, 2);
  check(std::memcmp(one_thread.data(), two_threads.data(), sizeof(float) * n_rows) == 0,
        "eps_sq_error is independent of the thread count, " + tag);
}

// channels_last rows give the results of the same logical data in C order.
void test_channels_last(int32_t dtype, std::mt19937& rng) {
  const int64_t n_rows = 3, channels = 3, height = 5, width = 7, plane = height * width;
  const int64_t row_length = channels * plane, n = n_rows * row_length;
  const RowLayout c_order{row_length, 0, 1, 1};
  const RowLayout channels_last{row_length, 1, channels, plane};
  Buffer logical = random_buffer(dtype, n, rng), permuted(dtype, n);
  for (int64_t i = 0; i < n_rows; ++i)
    for (int64_t e = 0; e < row_length; ++e)
      permuted.set(i * row_length + channels_last.memory_offset(e), logical.get(i * row_length + e));
  std::vector<float> a(n_rows), b(n_rows), c1(n_rows, 0.7f), c2(n_rows, 0.3f);
  cpu::eps_sq_error(logical.data(), a.data(), dtype, n_rows, c_order, 5, at_offset(0), 0, 2);
  cpu::eps_sq_error(permuted.data(), b.data(), dtype, n_rows, channels_last, 5, at_offset(0), 0, 2);
  check(std::memcmp(a.data(), b.data(), sizeof(float) * n_rows) == 0, "channels_last eps_sq_error, " +
                                                                           std::string(dtype_name(dtype)));
  Buffer out_c(dtype, n), out_cl(dtype, n);
  cpu::noise_inject(logical.data(), per_row(c1), per_row(c2), out_c.data(), nullptr, dtype, n_rows, c_order, 5,
                    at_offset(2), 1, 2);
  cpu::noise_inject(permuted.data(), per_row(c1), per_row(c2), out_cl.data(), nullptr, dtype, n_rows, channels_last, 5,
                    at_offset(2), 1, 2);
  bool ok = true;
  for (int64_t i = 0; i < n_rows; ++i)
    for (int64_t e = 0; e < row_length; ++e)
      ok = ok && same_bits(out_c.get(i * row_length + e),
                           out_cl.get(i * row_length + channels_last.memory_offset(e)));
  check(ok, "channels_last noise is keyed by the logical index, " + std::string(dtype_name(dtype)));
  cpu::pnorm_error(logical.data(), logical.data(), a.data(), dtype, n_rows, c_order, 4.0f, 2);
  check(a[0] == 0.0f && a[1] == 0.0f && a[2] == 0.0f, "pnorm_error of a tensor with itself is 0");
}

void test_vote() {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(0, 4);
  const int64_t n_samples = 257, n_models = 7;
  std::vector<double> scores(n_samples), thresholds(n_models * n_samples);
  for (auto& s : scores) s = small(rng) + 1e-9 * small(rng);  // distinct in float64, not in float32
  for (auto& t : thresholds) t = small(rng);                     // many ties
  std::vector<int32_t> votes(n_samples);
  std::vector<uint8_t> decision(n_samples);
  std::vector<double> margin(n_samples);
  cpu::vote(scores.data(), thresholds.data(), kFloat64, n_samples, n_models, 1, n_samples, 1, votes.data(),
            decision.data(), margin.data(), 2);
  std::vector<float> scores32(scores.begin(), scores.end()), thresholds32(thresholds.begin(), thresholds.end());
  std::vector<int32_t> votes32(n_samples);
  std::vector<uint8_t> decision32(n_samples);
  std::vector<float> margin32(n_samples);
  cpu::vote(scores32.data(), thresholds32.data(), kFloat32, n_samples, n_models, 1, n_samples, 1, votes32.data(),
            decision32.data(), margin32.data(), 1);
  bool ok = true, ok32 = true;
  for (int64_t i = 0; i < n_samples; ++i) {
    int v = 0, v32 = 0;
    double m = 0.0, m32 = 0.0;
    for (int64_t j = 0; j < n_models; ++j) {
      v += scores[i] < thresholds[j * n_samples + i];
      m += thresholds[j * n_samples + i] - scores[i];
      v32 += scores32[i] < thresholds32[j * n_samples + i];
      m32 += double(thresholds32[j * n_samples + i]) - double(scores32[i]);
    }
    ok = ok && votes[i] == v && decision[i] == (2 * v > n_models) && margin[i] == m / n_models;
    ok32 = ok32 && votes32[i] == v32 && decision32[i] == (2 * v32 > n_models) && margin32[i] == float(m32 / n_models);
  }
  check(ok, "float64 vote equals the scalar count, decision and float64 margin (with ties)");
  check(ok32, "float32 vote equals the scalar count, decision and margin (float64 sum, rounded once)");
  cpu::vote(scores.data(), thresholds.data(), kFloat64, n_samples, 0, 1, n_samples, 1, votes.data(), decision.data(),
            margin.data(), 1);
  check(votes[0] == 0 && decision[0] == 0 && std::isnan(margin[0]), "vote with no models: 0, false, NaN");
}

// A scalar coefficient is the same as a per-row array holding that value everywhere.
void test_scalar_coefficients() {
  std::mt19937 rng(3);
  const int64_t n_rows = 4, row_length = 257, n = n_rows * row_length;
  const RowLayout layout{row_length, 0, 1, 1};
  Buffer x = random_buffer(kFloat32, n, rng), eps = random_buffer(kFloat32, n, rng);
  std::vector<float> c1(n_rows, 0.75f), c2(n_rows, -1.25f);
  const RowCoefficient s1{nullptr, 0.75f}, s2{nullptr, -1.25f};
  Buffer by_row(kFloat32, n), by_scalar(kFloat32, n);
  cpu::ddim_step(x.data(), eps.data(), per_row(c1), per_row(c2), by_row.data(), kFloat32, n_rows, row_length, 1);
  cpu::ddim_step(x.data(), eps.data(), s1, s2, by_scalar.data(), kFloat32, n_rows, row_length, 1);
  check(std::memcmp(by_row.data(), by_scalar.data(), sizeof(float) * n) == 0, "scalar ddim_step coefficients");
  cpu::noise_inject(x.data(), per_row(c1), per_row(c2), by_row.data(), nullptr, kFloat32, n_rows, layout, 1,
                    at_offset(0), 0, 1);
  cpu::noise_inject(x.data(), s1, s2, by_scalar.data(), nullptr, kFloat32, n_rows, layout, 1, at_offset(0), 0,
                    1);
  check(std::memcmp(by_row.data(), by_scalar.data(), sizeof(float) * n) == 0, "scalar noise_inject coefficients");
  std::vector<float> a(n_rows), b(n_rows);
  cpu::ddim_step_sqerr(x.data(), eps.data(), per_row(c1), per_row(c2), x.data(), a.data(), kFloat32, n_rows, layout, 1);
  cpu::ddim_step_sqerr(x.data(), eps.data(), s1, s2, x.data(), b.data(), kFloat32, n_rows, layout, 1);
  check(a == b, "scalar ddim_step_sqerr coefficients");
}

// Per-row sample indices: offset + row spelled out gives the scalar form's bits, any other
// index list gives each row the noise of its own index, and a negative index throws.
void test_per_row_sample_indices() {
  std::mt19937 rng(5);
  const RowLayout layout{3 * 5 * 7, 0, 1, 1};
  const int64_t n_rows = 4, n = n_rows * layout.row_length;
  const uint64_t seed = 99, offset = (uint64_t(1) << 40) + 3;
  const uint32_t stream = 2;
  std::vector<int64_t> consecutive(n_rows), scattered = {7, 0, int64_t(offset), 7};
  for (int64_t i = 0; i < n_rows; ++i) consecutive[i] = int64_t(offset) + i;
  std::vector<float> by_offset(n), by_rows(n);
  cpu::philox_normal(by_offset.data(), kFloat32, n_rows, layout, seed, at_offset(offset), stream, 2);
  cpu::philox_normal(by_rows.data(), kFloat32, n_rows, layout, seed, SampleIndex{consecutive.data(), 0}, stream, 2);
  check(std::memcmp(by_offset.data(), by_rows.data(), sizeof(float) * n) == 0,
        "philox_normal: per-row indices offset + i equal the scalar offset");

  Buffer x0 = random_buffer(kFloat32, n, rng), a(kFloat32, n), b(kFloat32, n);
  const RowCoefficient half{nullptr, 0.5f};
  cpu::noise_inject(x0.data(), half, half, a.data(), nullptr, kFloat32, n_rows, layout, seed, at_offset(offset), stream,
                    1);
  cpu::noise_inject(x0.data(), half, half, b.data(), nullptr, kFloat32, n_rows, layout, seed,
                    SampleIndex{consecutive.data(), 0}, stream, 1);
  check(std::memcmp(a.data(), b.data(), sizeof(float) * n) == 0, "noise_inject: per-row indices equal the offset");
  std::vector<float> sum_offset(n_rows), sum_rows(n_rows);
  cpu::eps_sq_error(x0.data(), sum_offset.data(), kFloat32, n_rows, layout, seed, at_offset(offset), stream, 2);
  cpu::eps_sq_error(x0.data(), sum_rows.data(), kFloat32, n_rows, layout, seed, SampleIndex{consecutive.data(), 0},
                    stream, 2);
  check(sum_offset == sum_rows, "eps_sq_error: per-row indices equal the offset");

  std::vector<float> scattered_noise(n), single(layout.row_length);
  cpu::philox_normal(scattered_noise.data(), kFloat32, n_rows, layout, seed, SampleIndex{scattered.data(), 0}, stream,
                     1);
  bool rows_ok = true;
  for (int64_t i = 0; i < n_rows; ++i) {
    cpu::philox_normal(single.data(), kFloat32, 1, layout, seed, at_offset(uint64_t(scattered[i])), stream, 1);
    rows_ok = rows_ok && std::memcmp(single.data(), scattered_noise.data() + i * layout.row_length,
                                     sizeof(float) * layout.row_length) == 0;
  }
  check(rows_ok, "philox_normal: each row gets the noise of its own sample index");

  std::vector<int64_t> negative = {0, -1};
  check(throws_invalid([&] {
          cpu::philox_normal(by_rows.data(), kFloat32, 2, layout, seed, SampleIndex{negative.data(), 0}, stream, 1);
        }),
        "a negative per-row sample index throws");
}

// Winograd transforms around a plain GEMM give the 3x3 convolution (float64 loops as the
// reference), in two tile chunks; the NHWC GroupNorm gives float64 GroupNorm.
void test_unet_layers() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 2, height = 5, width = 7, channels = 9, out_channels = 10;
  std::vector<float> x(n * height * width * channels), g(out_channels * channels * 9), bias(out_channels);
  for (float& v : x) v = normal(rng);
  for (float& v : g) v = 0.2f * normal(rng);
  for (float& v : bias) v = normal(rng);
  // U[k][c][o] = (G g G^T)[k] for F(4x4, 3x3).
  const double G[6][3] = {{0.25, 0, 0},           {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                          {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  std::vector<float> u(36 * channels * out_channels);
  for (int r = 0; r < 6; ++r)
    for (int s = 0; s < 6; ++s)
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t o = 0; o < out_channels; ++o) {
          double acc = 0.0;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) acc += G[r][i] * double(g[((o * channels + c) * 3 + i) * 3 + j]) * G[s][j];
          u[((r * 6 + s) * channels + c) * out_channels + o] = float(acc);
        }
  const int64_t tiles = cpu::winograd_tiles(n, height, width);
  check(tiles == n * 2 * 2, "winograd_tiles counts 4x4 output tiles");
  std::vector<float> y(n * height * width * out_channels, -1.0f);
  for (int64_t p0 : {int64_t(0), int64_t(3)}) {
    const int64_t p1 = p0 == 0 ? 3 : tiles, count = p1 - p0;
    std::vector<float> v(36 * count * channels), m(36 * count * out_channels);
    cpu::winograd_input_transform(x.data(), v.data(), n, height, width, channels, p0, p1, 2);
    for (int k = 0; k < 36; ++k)
      for (int64_t q = 0; q < count; ++q)
        for (int64_t o = 0; o < out_channels; ++o) {
          float acc = 0.0f;
          for (int64_t c = 0; c < channels; ++c)
            acc += v[(k * count + q) * channels + c] * u[(k * channels + c) * out_channels + o];
          m[(k * count + q) * out_channels + o] = acc;
        }
    cpu::winograd_output_transform(m.data(), bias.data(), y.data(), n, height, width, out_channels, p0, p1, 2);
  }
  double worst = 0.0, scale = 0.0;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t h = 0; h < height; ++h)
      for (int64_t w = 0; w < width; ++w)
        for (int64_t o = 0; o < out_channels; ++o) {
          double acc = bias[o];
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
              const int64_t yy = h + i - 1, xx = w + j - 1;
              if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
              for (int64_t c = 0; c < channels; ++c)
                acc += double(x[((b * height + yy) * width + xx) * channels + c]) *
                       double(g[((o * channels + c) * 3 + i) * 3 + j]);
            }
          worst = std::max(worst, std::fabs(acc - double(y[((b * height + h) * width + w) * out_channels + o])));
          scale = std::max(scale, std::fabs(acc));
        }
  check(worst <= 1e-5 * scale, "Winograd transforms + GEMM equal the direct convolution (float64) to 1e-5");
  check(throws_invalid([&] { cpu::winograd_input_transform(x.data(), nullptr, n, height, width, channels, 0, 1, 1); }),
        "winograd_input_transform rejects a null output");
  check(throws_invalid(
            [&] { cpu::winograd_output_transform(y.data(), nullptr, y.data(), n, height, width, 1, 2, 1, 1); }),
        "winograd_output_transform rejects a reversed tile range");

  check(throws_invalid([&] {
          cpu::group_norm_act(x.data(), nullptr, kAddNone, nullptr, nullptr, kFloat32, y.data(), nullptr, kFloat32, n,
                              height * width, channels, 4, 1e-5f, 0, 1);
        }),
        "group_norm_act rejects groups that do not divide the channels");
}

// ---- GroupNorm(+add, +SiLU) ------------------------------------------------------------

struct GroupNormCase {
  int64_t n, pixels, channels, groups;
};

// act(GroupNorm(x + add)) in float64 from the stored inputs, s = x + add formed in float32
// as the kernel defines it. bound[e]: what the float32 output arithmetic may cost, a few ulp
// of |(s - mean) * scale| + |beta|.
std::vector<double> group_norm_reference(const Buffer& x, const Buffer* add, int32_t add_kind, const Buffer* gamma,
                                         const Buffer* beta, const GroupNormCase& k, float eps, bool apply_silu,
                                         std::vector<float>& sums, std::vector<double>& bound) {
  const int64_t per_group = k.channels / k.groups, count = k.pixels * per_group;
  sums.assign(size_t(k.n * k.pixels * k.channels), 0.0f);
  for (int64_t i = 0; i < k.n; ++i)
    for (int64_t p = 0; p < k.pixels; ++p)
      for (int64_t c = 0; c < k.channels; ++c) {
        const int64_t e = (i * k.pixels + p) * k.channels + c;
        float s = x.get(e);
        if (add_kind == kAddFull) s += add->get(e);
        if (add_kind == kAddPerChannel) s += add->get(i * k.channels + c);
        sums[e] = s;
      }
  std::vector<double> out(sums.size());
  bound.assign(sums.size(), 0.0);
  for (int64_t i = 0; i < k.n; ++i)
    for (int64_t g = 0; g < k.groups; ++g) {
      double mean = 0.0, m2 = 0.0;
      for (int64_t p = 0; p < k.pixels; ++p)
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) mean += sums[(i * k.pixels + p) * k.channels + c];
      mean /= double(count);
      for (int64_t p = 0; p < k.pixels; ++p)
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          const double d = sums[(i * k.pixels + p) * k.channels + c] - mean;
          m2 += d * d;
        }
      const double inv_std = 1.0 / std::sqrt(m2 / double(count) + double(eps));
      for (int64_t p = 0; p < k.pixels; ++p)
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          const int64_t e = (i * k.pixels + p) * k.channels + c;
          const double a = inv_std * (gamma ? gamma->get(c) : 1.0), b = beta ? beta->get(c) : 0.0;
          double v = (sums[e] - mean) * a + b;
          if (apply_silu) v = v / (1.0 + std::exp(-v));
          out[e] = v;
          bound[e] = 4.0 * 0x1p-24 * (std::fabs((sums[e] - mean) * a) + std::fabs(b));
        }
    }
  return out;
}

void test_group_norm_case(int32_t dtype, int32_t param_dtype, int32_t add_kind, bool apply_silu,
                          const GroupNormCase& k, std::mt19937& rng) {
  const std::string tag = std::string(dtype_name(dtype)) + " params " + dtype_name(param_dtype) + " add " +
                          std::to_string(add_kind) + " silu " + std::to_string(apply_silu) + " [" +
                          std::to_string(k.n) + ", " + std::to_string(k.pixels) + ", " + std::to_string(k.channels) +
                          "] groups " + std::to_string(k.groups);
  const int64_t elements = k.n * k.pixels * k.channels;
  Buffer x = random_buffer(dtype, elements, rng, 2.0f);
  for (int64_t e = 0; e < elements; ++e) x.set(e, x.get(e) + 3.0f);  // a mean away from zero
  Buffer add = random_buffer(dtype, add_kind == kAddPerChannel ? k.n * k.channels : elements, rng);
  Buffer gamma = random_buffer(param_dtype, k.channels, rng), beta = random_buffer(param_dtype, k.channels, rng);
  Buffer y(dtype, elements), sum_out(dtype, elements);
  const float eps = 1e-5f;
  cpu::group_norm_act(x.data(), add_kind == kAddNone ? nullptr : add.data(), add_kind, gamma.data(), beta.data(),
                      param_dtype, y.data(), sum_out.data(), dtype, k.n, k.pixels, k.channels, k.groups, eps,
                      apply_silu ? 1 : 0, 2);
  std::vector<float> sums;
  std::vector<double> bound;
  const std::vector<double> want =
      group_norm_reference(x, &add, add_kind, &gamma, &beta, k, eps, apply_silu, sums, bound);
  // float32: a few ulp of the O(1) outputs; 16-bit: the output's own rounding (2^-9 or 2^-12 relative).
  const double relative = dtype == kFloat32 ? 2e-6 : (dtype == kBFloat16 ? 1.0 / 256 : 1.0 / 2048);
  bool close = true, sums_equal = true;
  for (int64_t e = 0; e < elements; ++e) {
    close = close && std::fabs(double(y.get(e)) - want[e]) <= relative * std::fabs(want[e]) + bound[e] + 1e-6;
    sums_equal = sums_equal && same_bits(sum_out.get(e), rounded(dtype, sums[e]));
  }
  check(close, "group_norm_act equals float64 GroupNorm: " + tag);
  check(sums_equal, "group_norm_act's sum output is x + add rounded once: " + tag);
  // Without gamma and beta, and without the sum output.
  cpu::group_norm_act(x.data(), add_kind == kAddNone ? nullptr : add.data(), add_kind, nullptr, nullptr, param_dtype,
                      y.data(), nullptr, dtype, k.n, k.pixels, k.channels, k.groups, eps, apply_silu ? 1 : 0, 1);
  const std::vector<double> plain =
      group_norm_reference(x, &add, add_kind, nullptr, nullptr, k, eps, apply_silu, sums, bound);
  close = true;
  for (int64_t e = 0; e < elements; ++e)
    close = close && std::fabs(double(y.get(e)) - plain[e]) <= relative * std::fabs(plain[e]) + bound[e] + 1e-6;
  check(close, "group_norm_act without gamma and beta: " + tag);
}

void test_group_norm() {
  std::mt19937 rng(13);
  const GroupNormCase cases[] = {{2, 5 * 7, 12, 3}, {3, 1, 6, 6}, {1, 9, 5, 1}, {2, 4, 32, 32}, {1, 17, 1, 1}};
  for (int32_t dtype : kDtypes)
    for (int32_t param_dtype : {int32_t(kFloat32), dtype})
      for (int32_t add_kind : {int32_t(kAddNone), int32_t(kAddFull), int32_t(kAddPerChannel)})
        for (bool apply_silu : {false, true})
          for (const GroupNormCase& k : cases) {
            test_group_norm_case(dtype, param_dtype, add_kind, apply_silu, k, rng);
            if (param_dtype == kFloat32 && dtype == kFloat32) break;  // the two param loops coincide
          }

  // The baseline and AVX2 builds give the same bits.
  const GroupNormCase k{2, 33, 64, 32};
  const int64_t elements = k.n * k.pixels * k.channels;
  for (int32_t dtype : kDtypes) {
    Buffer x = random_buffer(dtype, elements, rng), add = random_buffer(dtype, k.n * k.channels, rng);
    Buffer best(dtype, elements), baseline(dtype, elements);
    cpu::group_norm_act(x.data(), add.data(), kAddPerChannel, nullptr, nullptr, kFloat32, best.data(), nullptr, dtype,
                        k.n, k.pixels, k.channels, k.groups, 1e-5f, 1, 2);
    cpu::force_simd_level(0);
    cpu::group_norm_act(x.data(), add.data(), kAddPerChannel, nullptr, nullptr, kFloat32, baseline.data(), nullptr,
                        dtype, k.n, k.pixels, k.channels, k.groups, 1e-5f, 1, 2);
    cpu::force_simd_level(-1);
    check(std::memcmp(best.data(), baseline.data(), best.bytes.size()) == 0,
          std::string("baseline and AVX2 GroupNorm loops give the same bits: ") + dtype_name(dtype));
  }

  // Argument errors throw; nothing to do returns quietly, null pointers and all.
  float data[8] = {};
  check(throws_invalid([&] {
          cpu::group_norm_act(data, nullptr, kAddFull, nullptr, nullptr, kFloat32, data, nullptr, kFloat32, 1, 2, 4, 2,
                              1e-5f, 0, 1);
        }),
        "group_norm_act: a full add needs its pointer");
  check(throws_invalid([&] {
          cpu::group_norm_act(data, nullptr, 3, nullptr, nullptr, kFloat32, data, nullptr, kFloat32, 1, 2, 4, 2, 1e-5f,
                              0, 1);
        }),
        "group_norm_act: unknown add kind");
  check(throws_invalid([&] {
          cpu::group_norm_act(data, nullptr, kAddNone, nullptr, nullptr, kFloat16, data, nullptr, kBFloat16, 1, 2, 4,
                              2, 1e-5f, 0, 1);
        }),
        "group_norm_act: gamma/beta in a third dtype");
  check(throws_invalid([&] {
          cpu::group_norm_act(data, nullptr, kAddNone, nullptr, nullptr, kFloat32, data, nullptr, kFloat32, 1, 2, 4, 2,
                              NAN, 0, 1);
        }),
        "group_norm_act: non-finite eps");
  check(throws_invalid([&] {
          cpu::group_norm_act(data, nullptr, kAddNone, nullptr, nullptr, kFloat32, nullptr, nullptr, kFloat32, 1, 2, 4,
                              2, 1e-5f, 0, 1);
        }),
        "group_norm_act: null output");
  bool quiet = true;
  try {
    cpu::group_norm_act(nullptr, nullptr, kAddFull, nullptr, nullptr, kFloat32, nullptr, nullptr, kBFloat16, 0, 16, 8,
                        4, 1e-5f, 1, 1);
    cpu::group_norm_act(nullptr, nullptr, kAddPerChannel, nullptr, nullptr, kFloat32, nullptr, nullptr, kFloat16, 3,
                        5, 0, 4, 1e-5f, 1, 1);
  } catch (...) {
    quiet = false;
  }
  check(quiet, "group_norm_act with nothing to do returns quietly");
}

// The baseline and AVX2 builds of the noise loop give the same bits.
void test_simd_builds() {
  const RowLayout layout{3 * 33 * 31, 0, 1, 1};
  const int64_t n_rows = 5, n = n_rows * layout.row_length;
  std::vector<float> best(n), baseline(n);
  cpu::philox_normal(best.data(), kFloat32, n_rows, layout, 42, at_offset(3), 1, 2);
  cpu::force_simd_level(0);
  check(cpu::active_simd_level() == cpu::SimdLevel::kGeneric, "the SIMD level can be capped");
  cpu::philox_normal(baseline.data(), kFloat32, n_rows, layout, 42, at_offset(3), 1, 2);
  cpu::force_simd_level(-1);
  check(std::memcmp(best.data(), baseline.data(), sizeof(float) * n) == 0,
        "baseline and AVX2 noise loops give the same bits");
  check(throws_invalid([] { cpu::force_simd_level(5); }), "an unknown SIMD level throws");
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  test_philox_known_answers();
  test_box_muller_accuracy();
  test_storage_conversions();
  test_validation();
  test_vote();
  test_simd_builds();
  test_scalar_coefficients();
  test_per_row_sample_indices();
  test_unet_layers();
  test_group_norm();
  for (int32_t dtype : kDtypes) {
    for (int64_t row_length : {int64_t(1), int64_t(3), int64_t(7), int64_t(1023), int64_t(4097)})
      test_case(dtype, 3, row_length, rng);
    test_case(dtype, 2, 3 * 64 * 64, rng);
    test_case(dtype, 1, 100003, rng);
    test_case(dtype, 0, 5, rng);
    test_case(dtype, 4, 0, rng);
    test_channels_last(dtype, rng);
  }
  std::printf("test_kernels_cpu: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
