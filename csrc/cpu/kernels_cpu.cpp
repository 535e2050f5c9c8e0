// CPU implementation of the fused kernels: argument checks, OpenMP over (row, chunk) tasks, run-time ISA choice.
#include "cpu/kernels_cpu.h"

#include <algorithm>
#include <atomic>
#include <vector>

#if QMIA_X86_DISPATCH
#include <immintrin.h>
#endif

#include "common/ddim_step.h"
#include "common/kernel_checks.h"
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
// defined outside (parallel_tasks, dispatch_storage, for_each_run) stay baseline code and
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
  check_philox_uint32(out, n_rows, n_groups);
  if (n_rows == 0 || n_groups == 0) return;
  const PhiloxKey key = philox_key(seed);
  parallel_tasks(n_rows, 4 * n_groups, num_threads, [&](int64_t row) {
    const uint64_t sample = offset + uint64_t(row);
    uint32_t* row_out = out + row * n_groups * 4;
    for (int64_t g = 0; g < n_groups; ++g) store_philox_words(row_out + 4 * g, key, sample, stream, uint32_t(g));
  });
}

void philox_normal(void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed,
                   SampleIndex samples, uint32_t stream, int num_threads) {
  check_philox_normal(out, dtype, n_rows, layout, samples, SampleMemory::kHost);
  if (n_rows == 0 || layout.row_length == 0) return;
  QMIA_SIMD_DISPATCH(philox_normal_rows, out, dtype, n_rows, layout, philox_key(seed), samples, stream, num_threads);
}

void noise_inject(const void* x0 /* [n_rows, D] */, RowCoefficient a /* [n_rows] or scalar */,
                  RowCoefficient b /* [n_rows] or scalar */, void* x_t /* [n_rows, D] */,
                  void* eps_out /* [n_rows, D] or null */, int32_t dtype, int64_t n_rows, RowLayout layout,
                  uint64_t seed, SampleIndex samples, uint32_t stream, int num_threads) {
  check_noise_inject(x0, a, b, x_t, dtype, n_rows, layout, samples, SampleMemory::kHost);
  if (n_rows == 0 || layout.row_length == 0) return;
  QMIA_SIMD_DISPATCH(noise_inject_rows, x0, a, b, x_t, eps_out, dtype, n_rows, layout, philox_key(seed), samples,
                    stream, num_threads);
}

void eps_sq_error(const void* eps_pred /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows,
                  RowLayout layout, uint64_t seed, SampleIndex samples, uint32_t stream, int num_threads) {
  check_eps_sq_error(eps_pred, out, dtype, n_rows, layout, samples, SampleMemory::kHost);
  if (n_rows == 0) return;
  QMIA_SIMD_DISPATCH(eps_sq_error_rows, eps_pred, out, dtype, n_rows, layout, philox_key(seed), samples, stream,
                    num_threads);
}

void ddim_step(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
               RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
               void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, int64_t row_length, int num_threads) {
  check_ddim_step(x, eps, c1, c2, out, dtype, n_rows, row_length);
  if (n_rows == 0 || row_length == 0) return;
  QMIA_SIMD_DISPATCH(ddim_step_rows, x, eps, c1, c2, out, dtype, n_rows, row_length, num_threads);
}

void ddim_step_sqerr(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                     RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                     const void* ref /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows,
                     RowLayout layout, int num_threads) {
  check_ddim_step_sqerr(x, eps, c1, c2, ref, out, dtype, n_rows, layout);
  if (n_rows == 0) return;
  QMIA_SIMD_DISPATCH(ddim_step_sqerr_rows, x, eps, c1, c2, ref, out, dtype, n_rows, layout, num_threads);
}

void pnorm_error(const void* a /* [n_rows, D] */, const void* b /* [n_rows, D] */, float* out /* [n_rows] */,
                 int32_t dtype, int64_t n_rows, RowLayout layout, float p, int num_threads) {
  check_pnorm_error(a, b, out, dtype, n_rows, layout, p);
  if (n_rows == 0) return;
  QMIA_SIMD_DISPATCH(pnorm_error_rows, a, b, out, dtype, n_rows, layout, p, num_threads);
}

void vote(const void* scores /* [n_samples] strided */, const void* thresholds /* [n_models, n_samples] strided */,
          int32_t dtype, int64_t n_samples, int64_t n_models, int64_t score_stride, int64_t model_stride,
          int64_t sample_stride, int32_t* votes /* [n_samples] */, uint8_t* decision /* [n_samples] */,
          void* margin /* [n_samples] */, int num_threads) {
  check_vote(scores, thresholds, dtype, n_samples, n_models, score_stride, model_stride, sample_stride, votes,
             decision, margin);
  if (n_samples == 0) return;
  auto run = [&](auto tag) {
    using S = typename decltype(tag)::type;
    parallel_tasks(n_samples, std::max<int64_t>(n_models, 1), num_threads, [&](int64_t i) {
      vote_sample(static_cast<const S*>(scores), static_cast<const S*>(thresholds), i, n_models, score_stride,
                  model_stride, sample_stride, votes, decision, static_cast<VoteMargin<S>*>(margin));
    });
  };
  dispatch_storage</*kAllowFloat64=*/true>(dtype, run);
}

void float_to_storage(const float* src /* [n] */, void* dst /* [n] */, int32_t dtype, int64_t n) {
  check_storage_conversion(src, dst, dtype, n);
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    S* out = static_cast<S*>(dst);
    for (int64_t k = 0; k < n; ++k) store_float(out + k, src[k]);
  });
}

void storage_to_float(const void* src /* [n] */, float* dst /* [n] */, int32_t dtype, int64_t n) {
  check_storage_conversion(src, dst, dtype, n);
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* in = static_cast<const S*>(src);
    for (int64_t k = 0; k < n; ++k) dst[k] = load_float(in + k);
  });
}

}  // namespace cpu
}  // namespace qmia
