// CPU entry points of the compiled core: OpenMP loops over raw pointers, no Python or torch types.
#pragma once

#include <cstdint>

#include "common/ddim_step.h"
#include "common/philox.h"
#include "common/qmia_common.h"

namespace qmia {
namespace cpu {

// Every function validates its arguments (throwing std::invalid_argument) before it
// touches memory, returns at once when there is nothing to do, and splits the work
// over num_threads OpenMP threads (<= 0: the OpenMP default). Storage pointers are
// void* of the type named by dtype; row-major [n_rows, row_length] unless the
// RowLayout says channels_last. Results never depend on num_threads.

// Raw Philox words, for tests: out[i, g, 0..3] = philox(counter (g, stream, offset + i), key(seed)).
void philox_uint32(uint32_t* out /* [n_rows, n_groups, 4] */, int64_t n_rows, int64_t n_groups, uint64_t seed,
                   uint64_t offset, uint32_t stream, int num_threads);

// The noise kernels key row i by samples.at(i): offset + i, or a per-row index array
// (host memory here), whose entries must be >= 0.
void philox_normal(void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed,
                   SampleIndex samples, uint32_t stream, int num_threads);

// x_t = a[i] x0 + b[i] eps with eps generated in place; eps_out (may be null) gets eps
// rounded to dtype. x_t uses the float32 eps.
void noise_inject(const void* x0 /* [n_rows, D] */, RowCoefficient a /* [n_rows] or scalar */,
                  RowCoefficient b /* [n_rows] or scalar */, void* x_t /* [n_rows, D] */,
                  void* eps_out /* [n_rows, D] or null */, int32_t dtype, int64_t n_rows, RowLayout layout,
                  uint64_t seed, SampleIndex samples, uint32_t stream, int num_threads);

// out[i] = sum_e (eps_pred[i, e] - eps[i, e])^2 with eps regenerated from its key.
void eps_sq_error(const void* eps_pred /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows,
                  RowLayout layout, uint64_t seed, SampleIndex samples, uint32_t stream, int num_threads);

// out = c1[i] x + c2[i] eps, elementwise in memory order (all three share one layout).
void ddim_step(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
               RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
               void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, int64_t row_length, int num_threads);

// out[i] = sum_e (c1[i] x + c2[i] eps - ref)^2, never storing the step.
void ddim_step_sqerr(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                     RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                     const void* ref /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows,
                     RowLayout layout, int num_threads);

// out[i] = sum_e |a - b|^p (no root); p > 0.
void pnorm_error(const void* a /* [n_rows, D] */, const void* b /* [n_rows, D] */, float* out /* [n_rows] */,
                 int32_t dtype, int64_t n_rows, RowLayout layout, float p, int num_threads);

// Majority vote of n_models thresholds per sample (see common/vote.h). dtype may be float64,
// and then margin is float64 too (else float32). Strides are in elements and may be 0 (broadcast).
void vote(const void* scores /* [n_samples], stride score_stride */,
          const void* thresholds /* [n_models, n_samples], strides (model_stride, sample_stride) */, int32_t dtype,
          int64_t n_samples, int64_t n_models, int64_t score_stride, int64_t model_stride, int64_t sample_stride,
          int32_t* votes /* [n_samples] */, uint8_t* decision /* [n_samples] */, void* margin /* [n_samples] */,
          int num_threads);

// Storage conversions, exposed so that tests can compare them with torch's casts.
void float_to_storage(const float* src /* [n] */, void* dst /* [n] */, int32_t dtype, int64_t n);
void storage_to_float(const void* src /* [n] */, float* dst /* [n] */, int32_t dtype, int64_t n);

// OpenMP's default thread count (1 without OpenMP).
int max_threads();

// The noise loops exist as a baseline x86-64 build and an AVX2 build, chosen at run time
// (the wheel is built without -march). Both give the same bits.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define QMIA_X86_DISPATCH 1
#else
#define QMIA_X86_DISPATCH 0
#endif
enum class SimdLevel : int { kGeneric = 0, kAvx2 = 1 };
SimdLevel active_simd_level();
// -1 picks the best the CPU supports; 0 or 1 caps it (tests compare the builds this way).
void force_simd_level(int level);

}  // namespace cpu
}  // namespace qmia
