// Internal to csrc/cpu: the OpenMP loop and the run-time AVX2 dispatch that the kernel and UNet-layer files share.
#pragma once

#include <cstdint>

#if defined(QMIA_HAVE_OPENMP)
#include <omp.h>
#endif

#include "cpu/kernels_cpu.h"

#if defined(__GNUC__)
#define QMIA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define QMIA_ALWAYS_INLINE inline
#endif

// Functions defined between QMIA_BEGIN_AVX2 and QMIA_END_AVX2 are compiled for AVX2; the
// wheel is built for baseline x86-64 and picks that copy at run time (QMIA_SIMD_DISPATCH).
// Templates defined outside (parallel_for, the files' own helpers) stay baseline code.
#if defined(__clang__)
#define QMIA_BEGIN_AVX2 _Pragma("clang attribute push(__attribute__((target(\"avx2\"))), apply_to = function)")
#define QMIA_END_AVX2 _Pragma("clang attribute pop")
#else
#define QMIA_BEGIN_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2\")")
#define QMIA_END_AVX2 _Pragma("GCC pop_options")
#endif

// Runs isa_avx2::name(args) or isa_generic::name(args), whichever the CPU (and any cap set
// by force_simd_level) allows.
#if QMIA_X86_DISPATCH
#define QMIA_SIMD_DISPATCH(name, ...) \
  (qmia::cpu::active_simd_level() == qmia::cpu::SimdLevel::kAvx2 ? isa_avx2::name(__VA_ARGS__) \
                                                                  : isa_generic::name(__VA_ARGS__))
#else
#define QMIA_SIMD_DISPATCH(name, ...) isa_generic::name(__VA_ARGS__)
#endif

namespace qmia {
namespace cpu {

// fn(i) for i in [0, n), over num_threads OpenMP threads (0: OpenMP's default) when there
// are several threads and several tasks, else on the calling thread.
template <typename Fn>
void parallel_for(int64_t n, int num_threads, const Fn& fn) {
#if defined(QMIA_HAVE_OPENMP)
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  if (threads > 1 && n > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#else
  (void)num_threads;
#endif
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace cpu
}  // namespace qmia
