// GroupNorm of NHWC data with an optional add before it and SiLU after it: the per-element formula and the statistics pieces.
#pragma once

#include "common/qmia_common.h"
#include "common/storage_types.h"

namespace qmia {

// y = act(GroupNorm(x + add)) over x [n, pixels, channels] (NHWC: channels innermost).
// A group is channels / groups consecutive channels of one image; its mean and biased
// variance run over all its pixels and channels. Then per element, in float32 without FMA
// on every back end,
//   y = ((s - mean_hi) - mean_lo) * scale[c] + beta[c],   scale = inv_std * gamma[c],
// where mean_hi + mean_lo is the float64 mean split into two floats. Subtracting the mean
// before scaling keeps the error a few ulp of y itself; the usual s * scale + shift form
// loses |mean| / std ulp, all of them when a group is (nearly) constant.
// s = x + add is formed in float32 from the loaded values and is not rounded to the
// storage dtype before it is normalised (the optional sum output stores it rounded).
enum GroupNormAdd : int32_t {
  kAddNone = 0,        // s = x
  kAddFull = 1,        // add [n, pixels, channels]: a residual
  kAddPerChannel = 2,  // add [n, channels]: broadcast over the pixels (a time embedding)
};

// e^x for the SiLU in float32 arithmetic the host compiler can vectorise (libm's expf
// stays scalar): x = k ln2 + r with |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial
// (truncation below 2e-8 relative), 2^k by building the exponent bits. Within a few ulp
// of expf for |x| < 87; clamps to e^-87.3 and e^88 outside (x / (1 + e^-x) is then x or
// 0 to float32 precision anyway). The same operations on CPU and CUDA.
QMIA_HD float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
  const float k = floorf(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln2 split into an exact high part and a tail
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_float(uint32_t(int32_t(k) + 127) << 23);
}

QMIA_HD float silu(float v) { return v / (1.0f + exp_approx(-v)); }

// The per-channel constants of the output pass (mean_hi and mean_lo are the group's).
struct GroupNormChannel {
  float mean_hi, mean_lo, scale, beta;
};

// 1 / sqrt(variance + eps) from the group's sum of squared deviations m2 over count elements.
QMIA_HD double group_inv_std(double m2, double count, float eps) {
  const double variance = m2 > 0.0 ? m2 / count : 0.0;  // a rounding-negative m2 is a zero variance
  return 1.0 / sqrt(variance + double(eps));
}

// Channel c's constants from its group's float64 mean and 1 / std (gamma, beta null: 1 and 0).
template <typename P>
QMIA_HD GroupNormChannel group_norm_channel(double mean, double inv_std, const P* gamma /* [channels] or null */,
                                            const P* beta /* [channels] or null */, int64_t c) {
  GroupNormChannel out;
  out.mean_hi = float(mean);
  out.mean_lo = float(mean - double(out.mean_hi));
  out.scale = float(inv_std * (gamma != nullptr ? double(load_float(gamma + c)) : 1.0));
  out.beta = beta != nullptr ? load_float(beta + c) : 0.0f;
  return out;
}

// The output of one element from its sum s and its channel's constants.
QMIA_HD float group_norm_output(float s, float mean_hi, float mean_lo, float scale, float beta, bool apply_silu) {
  const float centred = (s - mean_hi) - mean_lo;
  const float v = centred * scale + beta;
  return apply_silu ? silu(v) : v;
}

// Moments of a group from its channels' shifted sums: channel c holds count values v,
// summed as sum1 = sum (v - pivot[c]) and sum2 = sum (v - pivot[c])^2. Subtracting a
// value of the channel first keeps sum2 - sum1^2 / count from cancelling when the mean
// is large against the spread. Channels are merged with Chan's pairwise update in float64.
struct GroupMoments {
  double count = 0.0;
  double mean = 0.0;
  double m2 = 0.0;  // sum of squared deviations from mean

  QMIA_HD void add_channel(double channel_count, double pivot, double sum1, double sum2) {
    const double shifted_mean = sum1 / channel_count;
    const double channel_m2 = sum2 - sum1 * shifted_mean;
    const double channel_mean = pivot + shifted_mean;
    const double total = count + channel_count;
    const double delta = channel_mean - mean;
    mean += delta * (channel_count / total);
    m2 += channel_m2 + delta * delta * (count * channel_count / total);
    count = total;
  }
};

// The CUDA path cuts each image's pixels into chunks of this many elements' worth of
// pixels (at least one pixel), one block each; the CPU path reads the layout directly.
constexpr int64_t kGroupNormChunkElements = 16384;

QMIA_HD int64_t group_norm_chunk_pixels(int64_t channels) {
  const int64_t pixels = channels > 0 ? kGroupNormChunkElements / channels : 1;
  return pixels > 0 ? pixels : 1;
}

QMIA_HD int64_t group_norm_num_chunks(int64_t pixels, int64_t channels) {
  const int64_t chunk = group_norm_chunk_pixels(channels);
  return (pixels + chunk - 1) / chunk;
}

}  // namespace qmia
