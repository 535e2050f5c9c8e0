// Philox4x32-10 and a libm-free Box-Muller transform: N(0,1) noise with the same bits on CPU and CUDA.
#pragma once

#include "common/qmia_common.h"

namespace qmia {

// ---- Key and counter layout (a contract: kernels/ops.py and kernels/reference.py repeat it) ----
//
//   key     = (seed mod 2^32, seed div 2^32)                  seed in [0, 2^64)
//   counter = (group, stream, sample mod 2^32, sample div 2^32)
//   sample  = offset + row, or per_row[row]                  (global sample index, see SampleIndex)
//   group   = e div 4, e = logical C-order element index within the row
//
// One Philox call gives words (w0, w1, w2, w3), turned into the normals of elements
// 4*group + 0..3 by Box-Muller on the pairs (w0, w1) and (w2, w3):
//   u1 = (w_even + 0.5) * 2^-32, u2 = (w_odd + 0.5) * 2^-32   (never 0, never 1; exact in float64)
//   normal[4g + 0 or 2] = sqrt(-2 ln u1) * cos(2 pi u2)
//   normal[4g + 1 or 3] = sqrt(-2 ln u1) * sin(2 pi u2)
// Elements past the row's end are computed and dropped, so a row's noise does not
// depend on anything but (seed, sample, stream) and its logical shape.

constexpr uint32_t kPhiloxMul0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMul1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

QMIA_HD PhiloxWords philox_round(PhiloxWords c, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = uint64_t(kPhiloxMul0) * c.w0;
  const uint64_t p1 = uint64_t(kPhiloxMul1) * c.w2;
  return PhiloxWords{uint32_t(p1 >> 32) ^ c.w1 ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c.w3 ^ k1, uint32_t(p0)};
}

// Ten rounds written out: the host compiler then vectorises across counters instead
// of trying (and failing) to vectorise the round loop itself.
QMIA_HD PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                   uint32_t k1) {
  PhiloxWords c{c0, c1, c2, c3};
  c = philox_round(c, k0, k1);
  c = philox_round(c, k0 + 1u * kPhiloxWeyl0, k1 + 1u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 2u * kPhiloxWeyl0, k1 + 2u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 3u * kPhiloxWeyl0, k1 + 3u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 4u * kPhiloxWeyl0, k1 + 4u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 5u * kPhiloxWeyl0, k1 + 5u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 6u * kPhiloxWeyl0, k1 + 6u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 7u * kPhiloxWeyl0, k1 + 7u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 8u * kPhiloxWeyl0, k1 + 8u * kPhiloxWeyl1);
  c = philox_round(c, k0 + 9u * kPhiloxWeyl0, k1 + 9u * kPhiloxWeyl1);
  return c;
}

// ---- Box-Muller without libm -----------------------------------------------------
// libm's and CUDA's log/sin/cos differ by an ulp here and there, so both sides use
// these polynomials, built from +, -, *, / and sqrt only, which are IEEE-rounded
// everywhere (no FMA contraction: -ffp-contract=off and nvcc --fmad=false). They run
// in float64 with truncation errors below 1e-11 relative, so the float32 result is
// the correctly rounded exact Box-Muller value except in about 1 case in 200,000,
// which is 1 ulp off. Every branch is a value select, so the host loops vectorise.

// ln u for u in (0, 1): u = m 2^k with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact),
// ln(1 + f) = f - (hfsq - s (hfsq + R(s^2))), s = f / (2 + f), hfsq = f^2 / 2, where
// R(z) = 2z/3 + 2z^2/5 + ... + 2z^7/15 is the atanh series (|s| <= 0.172, so the first
// omitted term is below 1e-13). k is read from u rounded to float32, so that only
// 32-bit integer operations are needed (they vectorise on every x86-64); when that
// rounding crosses a power of two, m lands within 2^-24 of the range, which the
// series still covers, and m = u 2^-k stays exact.
QMIA_HD double log_unit_interval(double u) {
  const uint32_t bits = float_bits(float(u));
  const bool above_sqrt2 = (bits & 0x007FFFFFu) > 0x003504F3u;  // float32 mantissa of sqrt(2)
  const int32_t exponent = int32_t(bits >> 23) - 127 + (above_sqrt2 ? 1 : 0);  // in [-33, 0]
  const float inverse_power = bits_float(uint32_t(127 - exponent) << 23);      // 2^-exponent
  const double m = u * double(inverse_power);
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double r =
      z * (0.6666666666666666 +
           z * (0.4 +
                z * (0.2857142857142857 +
                     z * (0.2222222222222222 +
                          z * (0.18181818181818182 + z * (0.15384615384615385 + z * 0.13333333333333333))))));
  const double hfsq = 0.5 * f * f;
  return double(exponent) * 0.6931471805599453 + (f - (hfsq - s * (hfsq + r)));
}

// (cos, sin) of 2 pi u for u = (word + 0.5) 2^-32. Writing 4u = q + y with q the
// nearest integer (the top bits of word + 2^29) and y = (2d + 1) 2^-31, d = word - q 2^30
// as a signed 32-bit value, reduces the angle exactly to (pi/2) y with |y| <= 1/2,
// where the Taylor series of sin and cos (to y^11 and y^12) are below 1e-11.
QMIA_HD void cos_sin_two_pi_uniform(uint32_t word, double& cos_out, double& sin_out) {
  const uint32_t quadrant = ((word + 0x20000000u) >> 30) & 3u;
  const int32_t d = int32_t(word - (quadrant << 30));
  const double y = double(2 * d + 1) * 0x1p-31;
  const double y2 = y * y;
  const double s =
      y * (1.5707963267948966 +
           y2 * (-0.6459640975062462 +
                 y2 * (0.07969262624616703 +
                       y2 * (-0.004681754135318687 + y2 * (0.00016044118478735975 + y2 * -3.598843235212084e-06)))));
  const double c =
      1.0 + y2 * (-1.2337005501361697 +
                  y2 * (0.253669507901048 +
                        y2 * (-0.020863480763352957 +
                              y2 * (0.0009192602748394263 +
                                    y2 * (-2.5202042373060596e-05 + y2 * 4.710874778818169e-07)))));
  // cos and sin of quadrant * pi/2 + (pi/2) y from those of (pi/2) y.
  const bool swap = (quadrant & 1u) != 0;
  const double cos_abs = swap ? s : c;
  const double sin_abs = swap ? c : s;
  cos_out = (quadrant == 1u || quadrant == 2u) ? -cos_abs : cos_abs;
  sin_out = (quadrant >= 2u) ? -sin_abs : sin_abs;
}

QMIA_HD double uniform_open(uint32_t word) { return (double(word) + 0.5) * 0x1p-32; }  // exact in float64

QMIA_HD void box_muller(uint32_t radius_word, uint32_t angle_word, float& z_cos, float& z_sin) {
  const double radius = sqrt(-2.0 * log_unit_interval(uniform_open(radius_word)));
  double c, s;
  cos_sin_two_pi_uniform(angle_word, c, s);
  z_cos = float(radius * c);
  z_sin = float(radius * s);
}

struct PhiloxKey {
  uint32_t k0, k1;
};

QMIA_HD PhiloxKey philox_key(uint64_t seed) { return PhiloxKey{uint32_t(seed), uint32_t(seed >> 32)}; }

// The raw words of counter (group, stream, sample), for the philox_uint32 test kernels.
// Four plain stores: on CUDA a uint4 store would need a 16-byte aligned caller pointer.
QMIA_HD void store_philox_words(uint32_t* out /* [4] */, PhiloxKey key, uint64_t sample, uint32_t stream,
                                uint32_t group) {
  const PhiloxWords w = philox4x32_10(group, stream, uint32_t(sample), uint32_t(sample >> 32), key.k0, key.k1);
  out[0] = w.w0;
  out[1] = w.w1;
  out[2] = w.w2;
  out[3] = w.w3;
}

// The global sample index of each row of a noise kernel: offset + row, or one index per
// row read from memory. The per-row form lets a CUDA graph replay with new sample
// indices (a device array refilled between replays) where a scalar offset would be
// frozen into the captured launch. Indices are int64 >= 0 (checked where readable).
struct SampleIndex {
  const int64_t* per_row;  // [n_rows] on the kernel's device, or null
  uint64_t offset;         // used when per_row is null
  QMIA_HD uint64_t at(int64_t row) const {
    return per_row != nullptr ? uint64_t(per_row[row]) : offset + uint64_t(row);
  }
};

// The four normals of elements 4*group .. 4*group + 3 of one sample's row.
QMIA_HD void philox_normal4(PhiloxKey key, uint64_t sample, uint32_t stream, uint32_t group, float& n0,
                            float& n1, float& n2, float& n3) {
  const PhiloxWords w = philox4x32_10(group, stream, uint32_t(sample), uint32_t(sample >> 32), key.k0, key.k1);
  box_muller(w.w0, w.w1, n0, n1);
  box_muller(w.w2, w.w3, n2, n3);
}

}  // namespace qmia
