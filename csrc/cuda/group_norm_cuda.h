// CUDA GroupNorm(+add, +SiLU) of NHWC data: launcher on a caller-given stream, raw device pointers, no Python or torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qmia {
namespace cuda {

// The contract of cpu::group_norm_act (cpu/unet_layers_cpu.h) and common/group_norm.h on
// device pointers and the caller's stream (the caller has made the right device current).
// Argument errors throw std::invalid_argument before anything is launched; a launch error
// is returned. Nothing here synchronises or allocates, so a call can be captured in a CUDA
// graph; the caller provides group_norm_workspace_elements(n, pixels, channels) floats of
// scratch (device memory, stream-ordered).
//
// Three kernels: per (image, chunk of pixels) block, per-channel sums of the shifted
// values (v - v at pixel 0) and of their squares in float32; per (image, group), those
// partial sums merged in float64 into the mean and 1 / std, folded with gamma and beta into
// per-(image, channel) output constants; then one elementwise pass over 16-byte vectors of
// channels that forms x + add again, normalises, applies the SiLU and stores y (and the sum).
// The statistics follow another summation order than the CPU's, so results agree with the
// CPU to float32 rounding of the statistics, not bit for bit.
int64_t group_norm_workspace_elements(int64_t n, int64_t pixels, int64_t channels);

cudaError_t group_norm_act(const void* x /* [n, pixels, channels] */, const void* add /* per add_kind, or null */,
                           int32_t add_kind, const void* gamma /* [channels] or null */,
                           const void* beta /* [channels] or null */, int32_t param_dtype,
                           void* y /* [n, pixels, channels] */, void* sum_out /* [n, pixels, channels] or null */,
                           float* workspace /* [group_norm_workspace_elements] */, int32_t dtype, int64_t n,
                           int64_t pixels, int64_t channels, int64_t groups, float eps, int32_t silu,
                           cudaStream_t stream);

}  // namespace cuda
}  // namespace qmia
