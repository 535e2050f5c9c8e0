// CUDA entry points of the compiled core: launchers on a caller-given stream, raw pointers, no Python or torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/ddim_step.h"
#include "common/philox.h"
#include "common/qmia_common.h"

namespace qmia {
namespace cuda {

// Same contracts as cpu/kernels_cpu.h, on device pointers and the caller's stream
// (the caller has already made the right device current). Argument errors throw
// std::invalid_argument before anything is launched; a launch error is returned.
// Nothing here synchronises or allocates, so every call can be captured in a CUDA graph.
//
// The row reductions need a scratch buffer of reduce_workspace_elements(n_rows,
// row_length) floats (none when a row fits one 4096-element chunk).

int64_t reduce_workspace_elements(int64_t n_rows, int64_t row_length);

cudaError_t philox_uint32(uint32_t* out /* [n_rows, n_groups, 4] */, int64_t n_rows, int64_t n_groups, uint64_t seed,
                          uint64_t offset, uint32_t stream_id, cudaStream_t stream);

// The noise kernels key row i by samples.at(i): offset + i, or samples.per_row[i] read
// on the device (int64 >= 0, unchecked here: the array is device memory), which a
// captured graph reads afresh at every replay.
cudaError_t philox_normal(void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed,
                          SampleIndex samples, uint32_t stream_id, cudaStream_t stream);

cudaError_t noise_inject(const void* x0 /* [n_rows, D] */, RowCoefficient a /* [n_rows] or scalar */,
                         RowCoefficient b /* [n_rows] or scalar */, void* x_t /* [n_rows, D] */,
                         void* eps_out /* [n_rows, D] or null */, int32_t dtype, int64_t n_rows, RowLayout layout,
                         uint64_t seed, SampleIndex samples, uint32_t stream_id, cudaStream_t stream);

cudaError_t eps_sq_error(const void* eps_pred /* [n_rows, D] */, float* out /* [n_rows] */,
                         float* workspace /* [reduce_workspace_elements] */, int32_t dtype, int64_t n_rows,
                         RowLayout layout, uint64_t seed, SampleIndex samples, uint32_t stream_id,
                         cudaStream_t stream);

cudaError_t ddim_step(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                      RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                      void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, int64_t row_length,
                      cudaStream_t stream);

cudaError_t ddim_step_sqerr(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                            RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                            const void* ref /* [n_rows, D] */, float* out /* [n_rows] */,
                            float* workspace /* [reduce_workspace_elements] */, int32_t dtype, int64_t n_rows,
                            RowLayout layout, cudaStream_t stream);

cudaError_t pnorm_error(const void* a /* [n_rows, D] */, const void* b /* [n_rows, D] */, float* out /* [n_rows] */,
                        float* workspace /* [reduce_workspace_elements] */, int32_t dtype, int64_t n_rows,
                        RowLayout layout, float p, cudaStream_t stream);

cudaError_t vote(const void* scores /* [n_samples], stride score_stride */,
                 const void* thresholds /* [n_models, n_samples], strides (model_stride, sample_stride) */,
                 int32_t dtype, int64_t n_samples, int64_t n_models, int64_t score_stride, int64_t model_stride,
                 int64_t sample_stride, int32_t* votes /* [n_samples] */, uint8_t* decision /* [n_samples] */,
                 void* margin /* [n_samples], float64 for float64 input */, cudaStream_t stream);

}  // namespace cuda
}  // namespace qmia
