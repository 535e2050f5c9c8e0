// CPU layers of the UNet on NHWC data: Winograd F(4x4, 3x3) transforms (float32) and GroupNorm(+add, +SiLU).
#pragma once

#include <cstdint>

namespace qmia {
namespace cpu {

// A 3x3 convolution (stride 1, zero padding 1) of x [N, H, W, C] with weights g [O, C, 3, 3]
// is computed per 4x4 output tile as Y = A^T [(G g G^T) . (B^T d B)] A, d the 6x6 input
// patch (Lavin and Gray, 2016). The caller does the middle step as 36 matrix products:
//
//   V[k] [tiles, C] = input transform of the tiles       (winograd_input_transform)
//   M[k] [tiles, O] = V[k] @ U[k], U[k] [C, O] = (G g G^T)[k]   (any GEMM, e.g. torch.bmm)
//   y               = output transform of M, plus bias   (winograd_output_transform)
//
// with k = 6 * row + column of the 6x6 transformed tile. Tiles are numbered
// p = (n * tiles_h + ty) * tiles_w + tx, tiles_h = ceil(H / 4), tiles_w = ceil(W / 4);
// both transforms work on the tile range [p0, p1), so callers can go chunk by chunk and
// keep V and M in cache. Arithmetic is float32 without FMA contraction.

int64_t winograd_tiles(int64_t n, int64_t height, int64_t width);

void winograd_input_transform(const float* x /* [n, height, width, channels] */,
                              float* v /* [36, p1 - p0, channels] */, int64_t n, int64_t height, int64_t width,
                              int64_t channels, int64_t p0, int64_t p1, int num_threads);

void winograd_output_transform(const float* m /* [36, p1 - p0, out_channels] */,
                               const float* bias /* [out_channels] or null */,
                               float* y /* [n, height, width, out_channels] */, int64_t n, int64_t height,
                               int64_t width, int64_t out_channels, int64_t p0, int64_t p1, int num_threads);

// y = act(GroupNorm(x + add)) of NHWC data, as common/group_norm.h defines it: dtype is the
// storage of x, add, y and sum_out (float32, bfloat16, float16), param_dtype that of gamma
// and beta (float32 or dtype; null means 1 and 0). add_kind: kAddNone (add unused),
// kAddFull (add [n, pixels, channels]) or kAddPerChannel (add [n, channels]). The
// statistics are accumulated in float64 in two passes (the means, then the squared
// deviations from them); silu != 0 applies y * sigmoid(y). sum_out, if not null,
// receives x + add rounded to dtype. Images run in parallel over num_threads threads.
void group_norm_act(const void* x /* [n, pixels, channels] */, const void* add /* per add_kind, or null */,
                    int32_t add_kind, const void* gamma /* [channels] or null */,
                    const void* beta /* [channels] or null */, int32_t param_dtype,
                    void* y /* [n, pixels, channels] */, void* sum_out /* [n, pixels, channels] or null */,
                    int32_t dtype, int64_t n, int64_t pixels, int64_t channels, int64_t groups, float eps,
                    int32_t silu, int num_threads);

}  // namespace cpu
}  // namespace qmia
