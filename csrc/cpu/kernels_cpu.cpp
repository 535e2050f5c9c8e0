// CPU implementation of the fused kernels: argument checks, OpenMP over (row, chunk) tasks, run-time ISA choice.
#include "cpu/kernels_cpu.h"

#include <algorithm>
#include <atomic>
#include <vector>

#if QMIA_X86_DISPATCH
#include <immintrin.h>
#endif

#include "common/ddim_step.h"
#include "common/philox.h"
#include "common/row_reduce.h"
#include "common/storage_types.h"
#include "common/vote.h"
#include "cpu/cpu_dispatch.h"

namespace qmia {
namespace cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMinElements = 1 << 15;
// Elementwise work is cut into pieces of this size inside a row.
constexpr int64_t kElementwiseChunk = 1 << 14;

template <typename Fn>
void parallel_tasks(int64_t n_tasks, int64_t elements_per_task, int num_threads, const Fn& fn) {
  parallel_for(n_tasks, n_tasks * elements_per_task >= kParallelMinElements ? num_threads : 1, fn);
}

// Calls fn(ptr_type_tag) with the storage type named by dtype.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename Fn>
void dispatch_storage(int32_t dtype, const Fn& fn) {
  switch (dtype) {
    case kFloat32: fn(TypeTag<float>{}); return;
    case kBFloat16: fn(TypeTag<bf16_t>{}); return;
    case kFloat16: fn(TypeTag<f16_t>{}); return;
    default: require(false, "unknown dtype code " + std::to_string(dtype));
  }
}

// Visits the logical range [begin, end) of a row as runs that are evenly strided in
// memory: one run in C order; one run per channel plane in channels_last.
template <typename Fn>
void for_each_run(const RowLayout& layout, int64_t begin, int64_t end, const Fn& fn) {
  if (!layout.channels_last) {
    if (end > begin) fn(begin, end - begin, begin, int64_t(1));
    return;
  }
  int64_t e = begin;
  while (e < end) {
    const int64_t channel = e / layout.plane;
    const int64_t pixel = e - channel * layout.plane;
    const int64_t length = std::min(end - e, layout.plane - pixel);
    fn(e, length, pixel * layout.channels + channel, layout.channels);
    e += length;
  }
}

void check_noise_args(int64_t n_rows, const RowLayout& layout, const SampleIndex& samples) {
  check_size(n_rows, "n_rows");
  check_layout(layout);
  check_rows_times_length(n_rows, layout.row_length);
  if (samples.per_row == nullptr) {
    require(samples.offset <= UINT64_MAX - uint64_t(n_rows), "offset + n_rows overflows the 64-bit sample index");
    return;
  }
  for (int64_t row = 0; row < n_rows; ++row) {
    require(samples.per_row[row] >= 0, "sample index of row " + std::to_string(row) + " is negative (" +
                                           std::to_string(samples.per_row[row]) + ")");
  }
}

std::atomic<int> g_forced_simd{-1};  // -1: the best the CPU supports

SimdLevel best_simd_level() {
#if QMIA_X86_DISPATCH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return SimdLevel::kAvx2;
#endif
  return SimdLevel::kGeneric;
}


// ---- the chunk loops, once per instruction set ------------------------------------------
// The wheel is built for baseline x86-64; the AVX2 copy is picked at run time. Helpers
// defined above (parallel_tasks, dispatch_storage, for_each_run) stay baseline code and
// only call into the per-ISA lambdas, so no AVX2 instruction can leak into a path that
// runs on a CPU without it.

namespace isa_generic {
#define QMIA_CPU_ISA_AVX2 0
#include "cpu/kernels_cpu_loops.inc"
#undef QMIA_CPU_ISA_AVX2
}  // namespace isa_generic

#if QMIA_X86_DISPATCH
QMIA_BEGIN_AVX2
namespace isa_avx2 {
#define QMIA_CPU_ISA_AVX2 1
#include "cpu/kernels_cpu_loops.inc"
#undef QMIA_CPU_ISA_AVX2
}  // namespace isa_avx2
QMIA_END_AVX2
#endif

}  // namespace

SimdLevel active_simd_level() {
  const int forced = g_forced_simd.load(std::memory_order_relaxed);
  const SimdLevel best = best_simd_level();
  if (forced < 0 || forced > int(best)) return best;
  return SimdLevel(forced);
}

void force_simd_level(int level) {
  require(level >= -1 && level <= int(SimdLevel::kAvx2), "SIMD level must be -1 (auto), 0 (generic) or 1 (avx2)");
  g_forced_simd.store(level, std::memory_order_relaxed);
}

int max_threads() {
#if defined(QMIA_HAVE_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void philox_uint32(uint32_t* out /* [n_rows, n_groups, 4] */, int64_t n_rows, int64_t n_groups, uint64_t seed,
                   uint64_t offset, uint32_t stream, int num_threads) {
  check_size(n_rows, "n_rows");
  check_size(n_groups, "n_groups");
  require(n_groups <= (int64_t(1) << 32), "n_groups above 2^32");
  check_rows_times_length(n_rows, 4 * n_groups);
  check_pointer(out, n_rows * n_groups, "out");
  if (n_rows == 0 || n_groups == 0) return;
  const PhiloxKey key = philox_key(seed);
  parallel_tasks(n_rows, 4 * n_groups, num_threads, [&](int64_t row) {
    const uint64_t sample = offset + uint64_t(row);
    uint32_t* row_out = out + row * n_groups * 4;
    for (int64_t g = 0; g < n_groups; ++g) {
      const PhiloxWords w =
          philox4x32_10(uint32_t(g), stream, uint32_t(sample), uint32_t(sample >> 32), key.k0, key.k1);
      row_out[4 * g + 0] = w.w0;
      row_out[4 * g + 1] = w.w1;
      row_out[4 * g + 2] = w.w2;
      row_out[4 * g + 3] = w.w3;
    }
  });
}

void philox_normal(void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed,
                   SampleIndex samples, uint32_t stream, int num_threads) {
  check_dtype(dtype);
  check_noise_args(n_rows, layout, samples);
  const int64_t row_length = layout.row_length;
  check_pointer(out, n_rows * row_length, "out");
  if (n_rows == 0 || row_length == 0) return;
  QMIA_SIMD_DISPATCH(philox_normal_rows, out, dtype, n_rows, layout, philox_key(seed), samples, stream, num_threads);
}

void noise_inject(const void* x0 /* [n_rows, D] */, RowCoefficient a /* [n_rows] or scalar */,
                  RowCoefficient b /* [n_rows] or scalar */, void* x_t /* [n_rows, D] */,
                  void* eps_out /* [n_rows, D] or null */, int32_t dtype, int64_t n_rows, RowLayout layout,
                  uint64_t seed, SampleIndex samples, uint32_t stream, int num_threads) {
  check_dtype(dtype);
  check_noise_args(n_rows, layout, samples);
  const int64_t row_length = layout.row_length;
  check_pointer(x0, n_rows * row_length, "x0");
  check_pointer(x_t, n_rows * row_length, "x_t");
  check_coefficient(a, "a");
  check_coefficient(b, "b");
  if (n_rows == 0 || row_length == 0) return;
  QMIA_SIMD_DISPATCH(noise_inject_rows, x0, a, b, x_t, eps_out, dtype, n_rows, layout, philox_key(seed), samples,
                    stream, num_threads);
}

void eps_sq_error(const void* eps_pred /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows,
                  RowLayout layout, uint64_t seed, SampleIndex samples, uint32_t stream, int num_threads) {
  check_dtype(dtype);
  check_noise_args(n_rows, layout, samples);
  const int64_t row_length = layout.row_length;
  check_pointer(eps_pred, n_rows * row_length, "eps_pred");
  check_pointer(out, n_rows, "out");
  if (n_rows == 0) return;
  QMIA_SIMD_DISPATCH(eps_sq_error_rows, eps_pred, out, dtype, n_rows, layout, philox_key(seed), samples, stream,
                    num_threads);
}

void ddim_step(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
               RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
               void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, int64_t row_length, int num_threads) {
  check_dtype(dtype);
  check_size(n_rows, "n_rows");
  check_size(row_length, "row_length");
  check_rows_times_length(n_rows, row_length);
  check_pointer(x, n_rows * row_length, "x");
  check_pointer(eps, n_rows * row_length, "eps");
  check_pointer(out, n_rows * row_length, "out");
  check_coefficient(c1, "c1");
  check_coefficient(c2, "c2");
  if (n_rows == 0 || row_length == 0) return;
  QMIA_SIMD_DISPATCH(ddim_step_rows, x, eps, c1, c2, out, dtype, n_rows, row_length, num_threads);
}

void ddim_step_sqerr(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                     RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                     const void* ref /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows,
                     RowLayout layout, int num_threads) {
  check_dtype(dtype);
  check_size(n_rows, "n_rows");
  check_layout(layout);
  const int64_t row_length = layout.row_length;
  check_rows_times_length(n_rows, row_length);
  check_pointer(x, n_rows * row_length, "x");
  check_pointer(eps, n_rows * row_length, "eps");
  check_pointer(ref, n_rows * row_length, "ref");
  check_coefficient(c1, "c1");
  check_coefficient(c2, "c2");
  check_pointer(out, n_rows, "out");
  if (n_rows == 0) return;
  QMIA_SIMD_DISPATCH(ddim_step_sqerr_rows, x, eps, c1, c2, ref, out, dtype, n_rows, layout, num_threads);
}

void pnorm_error(const void* a /* [n_rows, D] */, const void* b /* [n_rows, D] */, float* out /* [n_rows] */,
                 int32_t dtype, int64_t n_rows, RowLayout layout, float p, int num_threads) {
  check_dtype(dtype);
  check_size(n_rows, "n_rows");
  check_layout(layout);
  require(std::isfinite(p) && p > 0.0f, "p must be finite and > 0");
  const int64_t row_length = layout.row_length;
  check_rows_times_length(n_rows, row_length);
  check_pointer(a, n_rows * row_length, "a");
  check_pointer(b, n_rows * row_length, "b");
  check_pointer(out, n_rows, "out");
  if (n_rows == 0) return;
  QMIA_SIMD_DISPATCH(pnorm_error_rows, a, b, out, dtype, n_rows, layout, p, num_threads);
}

void vote(const void* scores /* [n_samples] strided */, const void* thresholds /* [n_models, n_samples] strided */,
          int32_t dtype, int64_t n_samples, int64_t n_models, int64_t score_stride, int64_t model_stride,
          int64_t sample_stride, int32_t* votes /* [n_samples] */, uint8_t* decision /* [n_samples] */,
          float* margin /* [n_samples] */, int num_threads) {
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
  if (n_samples == 0) return;
  auto run = [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* score_data = static_cast<const S*>(scores);
    const S* threshold_data = static_cast<const S*>(thresholds);
    parallel_tasks(n_samples, std::max<int64_t>(n_models, 1), num_threads, [&](int64_t i) {
      const S* column = threshold_data + i * sample_stride;
      const VoteOutcome outcome = [&] {
        if constexpr (std::is_same<S, double>::value) {
          return vote_one(score_data[i * score_stride], [&](int64_t j) { return column[j * model_stride]; },
                          n_models);
        } else {
          return vote_one(load_float(score_data + i * score_stride),
                          [&](int64_t j) { return load_float(column + j * model_stride); }, n_models);
        }
      }();
      votes[i] = outcome.votes;
      decision[i] = outcome.member ? 1 : 0;
      margin[i] = outcome.margin;
    });
  };
  if (dtype == kFloat64) {
    run(TypeTag<double>{});
  } else {
    dispatch_storage(dtype, run);
  }
}

void float_to_storage(const float* src /* [n] */, void* dst /* [n] */, int32_t dtype, int64_t n) {
  check_dtype(dtype);
  check_size(n, "n");
  check_pointer(src, n, "src");
  check_pointer(dst, n, "dst");
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    S* out = static_cast<S*>(dst);
    for (int64_t k = 0; k < n; ++k) store_float(out + k, src[k]);
  });
}

void storage_to_float(const void* src /* [n] */, float* dst /* [n] */, int32_t dtype, int64_t n) {
  check_dtype(dtype);
  check_size(n, "n");
  check_pointer(src, n, "src");
  check_pointer(dst, n, "dst");
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* in = static_cast<const S*>(src);
    for (int64_t k = 0; k < n; ++k) dst[k] = load_float(in + k);
  });
}

}  // namespace cpu
}  // namespace qmia
