// CPU UNet layers (Winograd F(4x4, 3x3) transforms, NHWC GroupNorm): argument checks, OpenMP, run-time AVX2 choice.
#include "cpu/unet_layers_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/qmia_common.h"
#include "cpu/cpu_dispatch.h"
#include "cpu/kernels_cpu.h"

namespace qmia {
namespace cpu {
namespace {

// Channels handled per pass over a tile: the transformed tile (36 x block floats, 9 KB)
// stays in L1 while the block's loops vectorise.
constexpr int64_t kChannelBlock = 64;
alignas(64) const float kZeros[kChannelBlock] = {};

namespace isa_generic {
#include "cpu/unet_layers_cpu_loops.inc"
}  // namespace isa_generic

#if QMIA_X86_DISPATCH
QMIA_BEGIN_AVX2
namespace isa_avx2 {
#include "cpu/unet_layers_cpu_loops.inc"
}  // namespace isa_avx2
QMIA_END_AVX2
#endif

void check_geometry(int64_t n, int64_t height, int64_t width, int64_t channels, int64_t p0, int64_t p1) {
  check_size(n, "n");
  check_size(height, "height");
  check_size(width, "width");
  check_size(channels, "channels");
  require(height <= (int64_t(1) << 30) && width <= (int64_t(1) << 30) && channels <= (int64_t(1) << 30),
          "image sizes above 2^30 are not supported");
  check_rows_times_length(n, height * width);
  check_rows_times_length(n * height * width, channels);
  const int64_t tiles = winograd_tiles(n, height, width);
  require(0 <= p0 && p0 <= p1 && p1 <= tiles, "tile range [" + std::to_string(p0) + ", " + std::to_string(p1) +
                                                  ") is outside [0, " + std::to_string(tiles) + "]");
  check_rows_times_length(36 * (p1 - p0), channels);
}

}  // namespace

int64_t winograd_tiles(int64_t n, int64_t height, int64_t width) {
  check_size(n, "n");
  check_size(height, "height");
  check_size(width, "width");
  return n * ((height + 3) / 4) * ((width + 3) / 4);
}

void winograd_input_transform(const float* x /* [n, height, width, channels] */,
                              float* v /* [36, p1 - p0, channels] */, int64_t n, int64_t height, int64_t width,
                              int64_t channels, int64_t p0, int64_t p1, int num_threads) {
  check_geometry(n, height, width, channels, p0, p1);
  check_pointer(x, n * height * width * channels, "x");
  check_pointer(v, 36 * (p1 - p0) * channels, "v");
  if (p1 == p0 || channels == 0) return;
  QMIA_SIMD_DISPATCH(input_tiles, x, v, height, width, channels, p0, p1, num_threads);
}

void winograd_output_transform(const float* m /* [36, p1 - p0, out_channels] */,
                               const float* bias /* [out_channels] or null */,
                               float* y /* [n, height, width, out_channels] */, int64_t n, int64_t height,
                               int64_t width, int64_t out_channels, int64_t p0, int64_t p1, int num_threads) {
  check_geometry(n, height, width, out_channels, p0, p1);
  check_pointer(m, 36 * (p1 - p0) * out_channels, "m");
  check_pointer(y, n * height * width * out_channels, "y");
  if (p1 == p0 || out_channels == 0) return;
  QMIA_SIMD_DISPATCH(output_tiles, m, bias, y, height, width, out_channels, p0, p1, num_threads);
}

void group_norm_nhwc(const float* x /* [n, pixels, channels] */, const float* gamma /* [channels] or null */,
                     const float* beta /* [channels] or null */, float* y /* [n, pixels, channels] */, int64_t n,
                     int64_t pixels, int64_t channels, int64_t groups, float eps, int32_t silu, int num_threads) {
  check_size(n, "n");
  check_size(pixels, "pixels");
  check_size(channels, "channels");
  require(groups > 0 && channels % groups == 0,
          "groups = " + std::to_string(groups) + " must be positive and divide channels = " + std::to_string(channels));
  require(std::isfinite(eps) && eps >= 0.0f, "eps must be finite and >= 0");
  check_rows_times_length(n, pixels);
  check_rows_times_length(n * pixels, channels);
  check_pointer(x, n * pixels * channels, "x");
  check_pointer(y, n * pixels * channels, "y");
  if (n == 0 || pixels == 0 || channels == 0) return;
  QMIA_SIMD_DISPATCH(group_norm_images, x, gamma, beta, y, n, pixels, channels, groups, eps, silu, num_threads);
}

}  // namespace cpu
}  // namespace qmia
