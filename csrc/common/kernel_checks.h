// Each kernel's argument checks, written once and run by both back ends before any memory is touched.
#pragma once

#include "common/ddim_step.h"
#include "common/group_norm.h"
#include "common/philox.h"
#include "common/qmia_common.h"

namespace qmia {

// A per-row sample index array is read only where it is host memory: on CUDA it is
// device memory, and reading it would synchronise (and break graph capture).
enum class SampleMemory { kHost, kDevice };

inline void check_noise_rows(int64_t n_rows, const RowLayout& layout, const SampleIndex& samples,
                             SampleMemory memory) {
  check_size(n_rows, "n_rows");
  check_layout(layout);
  check_rows_times_length(n_rows, layout.row_length);
  if (samples.per_row == nullptr) {
    require(samples.offset <= UINT64_MAX - uint64_t(n_rows), "offset + n_rows overflows the 64-bit sample index");
    return;
  }
  if (memory == SampleMemory::kDevice) return;
  for (int64_t row = 0; row < n_rows; ++row) {
    require(samples.per_row[row] >= 0, "sample index of row " + std::to_string(row) + " is negative (" +
                                           std::to_string(samples.per_row[row]) + ")");
  }
}

// Rows of a reduction or an elementwise step: dtype, sizes, layout.
inline void check_rows(int32_t dtype, int64_t n_rows, const RowLayout& layout) {
  check_dtype(dtype);
  check_size(n_rows, "n_rows");
  check_layout(layout);
  check_rows_times_length(n_rows, layout.row_length);
}

inline void check_philox_uint32(const uint32_t* out, int64_t n_rows, int64_t n_groups) {
  check_size(n_rows, "n_rows");
  check_size(n_groups, "n_groups");
  require(n_groups <= (int64_t(1) << 32), "n_groups above 2^32");
  check_rows_times_length(n_rows, 4 * n_groups);
  check_pointer(out, n_rows * n_groups, "out");
}

inline void check_philox_normal(const void* out, int32_t dtype, int64_t n_rows, const RowLayout& layout,
                                const SampleIndex& samples, SampleMemory memory) {
  check_dtype(dtype);
  check_noise_rows(n_rows, layout, samples, memory);
  check_pointer(out, n_rows * layout.row_length, "out");
}

inline void check_noise_inject(const void* x0, const RowCoefficient& a, const RowCoefficient& b, const void* x_t,
                               int32_t dtype, int64_t n_rows, const RowLayout& layout, const SampleIndex& samples,
                               SampleMemory memory) {
  check_dtype(dtype);
  check_noise_rows(n_rows, layout, samples, memory);
  check_pointer(x0, n_rows * layout.row_length, "x0");
  check_pointer(x_t, n_rows * layout.row_length, "x_t");
  check_coefficient(a, "a");
  check_coefficient(b, "b");
}

inline void check_eps_sq_error(const void* eps_pred, const float* out, int32_t dtype, int64_t n_rows,
                               const RowLayout& layout, const SampleIndex& samples, SampleMemory memory) {
  check_dtype(dtype);
  check_noise_rows(n_rows, layout, samples, memory);
  check_pointer(eps_pred, n_rows * layout.row_length, "eps_pred");
  check_pointer(out, n_rows, "out");
}

inline void check_ddim_step(const void* x, const void* eps, const RowCoefficient& c1, const RowCoefficient& c2,
                            const void* out, int32_t dtype, int64_t n_rows, int64_t row_length) {
  RowLayout layout;
  layout.row_length = row_length;
  check_rows(dtype, n_rows, layout);
  check_pointer(x, n_rows * row_length, "x");
  check_pointer(eps, n_rows * row_length, "eps");
  check_pointer(out, n_rows * row_length, "out");
  check_coefficient(c1, "c1");
  check_coefficient(c2, "c2");
}

inline void check_ddim_step_sqerr(const void* x, const void* eps, const RowCoefficient& c1, const RowCoefficient& c2,
                                  const void* ref, const float* out, int32_t dtype, int64_t n_rows,
                                  const RowLayout& layout) {
  check_rows(dtype, n_rows, layout);
  check_pointer(x, n_rows * layout.row_length, "x");
  check_pointer(eps, n_rows * layout.row_length, "eps");
  check_pointer(ref, n_rows * layout.row_length, "ref");
  check_coefficient(c1, "c1");
  check_coefficient(c2, "c2");
  check_pointer(out, n_rows, "out");
}

inline void check_pnorm_error(const void* a, const void* b, const float* out, int32_t dtype, int64_t n_rows,
                              const RowLayout& layout, float p) {
  check_rows(dtype, n_rows, layout);
  require(std::isfinite(p) && p > 0.0f, "p must be finite and > 0");
  check_pointer(a, n_rows * layout.row_length, "a");
  check_pointer(b, n_rows * layout.row_length, "b");
  check_pointer(out, n_rows, "out");
}

inline void check_vote(const void* scores, const void* thresholds, int32_t dtype, int64_t n_samples, int64_t n_models,
                       int64_t score_stride, int64_t model_stride, int64_t sample_stride, const int32_t* votes,
                       const uint8_t* decision, const void* margin) {
  check_dtype(dtype, /*allow_float64=*/true);
  check_size(n_samples, "n_samples");
  check_size(n_models, "n_models");
  require(n_models <= INT32_MAX, "n_models above 2^31 - 1");
  check_size(score_stride, "score_stride");
  check_size(model_stride, "model_stride");
  check_size(sample_stride, "sample_stride");
  check_pointer(scores, n_samples, "scores");
  check_pointer(thresholds, n_samples * n_models, "thresholds");
  check_pointer(votes, n_samples, "votes");
  check_pointer(decision, n_samples, "decision");
  check_pointer(margin, n_samples, "margin");
}

// Either direction of float_to_storage / storage_to_float: n elements from src to dst.
inline void check_storage_conversion(const void* src, const void* dst, int32_t dtype, int64_t n) {
  check_dtype(dtype);
  check_size(n, "n");
  check_pointer(src, n, "src");
  check_pointer(dst, n, "dst");
}

// gamma, beta and the sum output are optional (null: 1, 0, not wanted), so only their dtype is checked.
inline void check_group_norm(const void* x, const void* add, int32_t add_kind, int32_t param_dtype, const void* y,
                             int32_t dtype, int64_t n, int64_t pixels, int64_t channels, int64_t groups, float eps,
                             int32_t silu) {
  check_dtype(dtype);
  require(param_dtype == kFloat32 || param_dtype == dtype,
          std::string("gamma/beta dtype must be float32 or the data's dtype ") + dtype_name(dtype) + ", got code " +
              std::to_string(param_dtype));
  check_size(n, "n");
  check_size(pixels, "pixels");
  check_size(channels, "channels");
  require(groups > 0 && channels % groups == 0,
          "groups = " + std::to_string(groups) + " must be positive and divide channels = " + std::to_string(channels));
  require(std::isfinite(eps) && eps >= 0.0f, "eps must be finite and >= 0");
  require(silu == 0 || silu == 1, "silu must be 0 or 1");
  require(add_kind == kAddNone || add_kind == kAddFull || add_kind == kAddPerChannel,
          "add_kind must be 0 (none), 1 (full) or 2 (per channel), got " + std::to_string(add_kind));
  check_rows_times_length(n, pixels);
  check_rows_times_length(n, channels);
  check_rows_times_length(n * pixels, channels);
  const int64_t elements = n * pixels * channels;
  check_pointer(x, elements, "x");
  check_pointer(y, elements, "y");
  if (add_kind != kAddNone) check_pointer(add, add_kind == kAddFull ? elements : n * channels, "add");
}

}  // namespace qmia
