// CPU UNet layers (Winograd F(4x4, 3x3) transforms, NHWC GroupNorm(+add, +SiLU)): argument checks, OpenMP, run-time AVX2 choice.
#include "cpu/unet_layers_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/group_norm.h"
#include "common/kernel_checks.h"
#include "common/qmia_common.h"
#include "common/storage_types.h"
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

void group_norm_act(const void* x /* [n, pixels, channels] */, const void* add /* per add_kind, or null */,
                    int32_t add_kind, const void* gamma /* [channels] or null */,
                    const void* beta /* [channels] or null */, int32_t param_dtype,
                    void* y /* [n, pixels, channels] */, void* sum_out /* [n, pixels, channels] or null */,
                    int32_t dtype, int64_t n, int64_t pixels, int64_t channels, int64_t groups, float eps,
                    int32_t silu, int num_threads) {
  check_group_norm(x, add, add_kind, param_dtype, y, dtype, n, pixels, channels, groups, eps, silu);
  if (n == 0 || pixels == 0 || channels == 0) return;
  // The loops read float32 parameters; others are widened once here (channels values).
  std::vector<float> widened[2];
  const float* params[2] = {static_cast<const float*>(gamma), static_cast<const float*>(beta)};
  if (param_dtype != kFloat32) {
    const void* given[2] = {gamma, beta};
    for (int k = 0; k < 2; ++k) {
      if (given[k] == nullptr) continue;
      widened[k].resize(size_t(channels));
      dispatch_storage(param_dtype, [&](auto tag) {
        using P = typename decltype(tag)::type;
        for (int64_t c = 0; c < channels; ++c) widened[k][c] = load_float(static_cast<const P*>(given[k]) + c);
      });
      params[k] = widened[k].data();
    }
  }
  QMIA_SIMD_DISPATCH(group_norm_act_images, x, add, add_kind, params[0], params[1], y, sum_out, dtype, n, pixels,
                     channels, groups, eps, silu != 0, num_threads);
}

}  // namespace cpu
}  // namespace qmia
