// CPU implementation of the fused kernels: OpenMP over (row, chunk) tasks, SIMD loops inside a chunk.
#include "cpu/kernels_cpu.h"

#include <algorithm>
#include <atomic>
#include <vector>

#if defined(QMIA_HAVE_OPENMP)
#include <omp.h>
#endif
#if QMIA_X86_DISPATCH
#include <immintrin.h>
#endif

#include "common/ddim_step.h"
#include "common/philox.h"
#include "common/row_reduce.h"
#include "common/storage_types.h"
#include "common/vote.h"

namespace qmia {
namespace cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMinElements = 1 << 15;
// Elementwise work is cut into pieces of this size inside a row.
constexpr int64_t kElementwiseChunk = 1 << 14;

template <typename Fn>
void parallel_tasks(int64_t n_tasks, int64_t elements_per_task, int num_threads, const Fn& fn) {
#if defined(QMIA_HAVE_OPENMP)
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  if (threads > 1 && n_tasks > 1 && n_tasks * elements_per_task >= kParallelMinElements) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t task = 0; task < n_tasks; ++task) fn(task);
    return;
  }
#else
  (void)num_threads;
#endif
  for (int64_t task = 0; task < n_tasks; ++task) fn(task);
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

// normals[0 .. 4 n_groups): the noise of groups first_group .. first_group + n_groups - 1,
// at most kReduceChunk / 4 groups. Two passes: the Philox words into four unit-stride
// arrays, then Box-Muller over them, which keeps both loops free of lane shuffles.
// Everything is compiled twice, for baseline x86-64 (SSE2) and for AVX2 (with
// hand-written Philox rounds), and picked at run time. Both builds do the same integer
// and IEEE operations in the same order, so their bits are equal.
#if defined(__GNUC__)
#define QMIA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define QMIA_ALWAYS_INLINE inline
#endif

constexpr int64_t kMaxGroups = kReduceChunk / 4;

struct PhiloxWordArrays {
  alignas(64) uint32_t w0[kMaxGroups];
  alignas(64) uint32_t w1[kMaxGroups];
  alignas(64) uint32_t w2[kMaxGroups];
  alignas(64) uint32_t w3[kMaxGroups];
};

QMIA_ALWAYS_INLINE void philox_words_loop(PhiloxWordArrays& words, PhiloxKey key, uint64_t sample, uint32_t stream,
                                          uint32_t first_group, int64_t begin, int64_t n_groups) {
#pragma omp simd
  for (int64_t g = begin; g < n_groups; ++g) {
    const PhiloxWords w =
        philox4x32_10(first_group + uint32_t(g), stream, uint32_t(sample), uint32_t(sample >> 32), key.k0, key.k1);
    words.w0[g] = w.w0;
    words.w1[g] = w.w1;
    words.w2[g] = w.w2;
    words.w3[g] = w.w3;
  }
}

QMIA_ALWAYS_INLINE void box_muller_loop(const PhiloxWordArrays& words, float* normals /* [4 n_groups] */,
                                        int64_t n_groups) {
#pragma omp simd
  for (int64_t g = 0; g < n_groups; ++g) {
    float n0, n1, n2, n3;
    box_muller(words.w0[g], words.w1[g], n0, n1);
    box_muller(words.w2[g], words.w3[g], n2, n3);
    normals[4 * g + 0] = n0;
    normals[4 * g + 1] = n1;
    normals[4 * g + 2] = n2;
    normals[4 * g + 3] = n3;
  }
}

void fill_normals_generic(float* normals /* [4 n_groups] */, PhiloxKey key, uint64_t sample, uint32_t stream,
                          uint32_t first_group, int64_t n_groups) {
  PhiloxWordArrays words;
  philox_words_loop(words, key, sample, stream, first_group, 0, n_groups);
  box_muller_loop(words, normals, n_groups);
}

#if QMIA_X86_DISPATCH
// (high, low) 32-bit halves of m * x in all eight lanes: vpmuludq multiplies the even
// lanes, the odd lanes are shifted down and multiplied, and blends put the halves back.
__attribute__((target("avx2"))) QMIA_ALWAYS_INLINE void mulhilo8(__m256i x, __m256i m, __m256i& high,
                                                                 __m256i& low) {
  const __m256i even = _mm256_mul_epu32(x, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
  low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// philox4x32_10 of philox.h for eight consecutive groups at a time.
__attribute__((target("avx2"))) void philox_words_avx2(PhiloxWordArrays& words, PhiloxKey key, uint64_t sample,
                                                       uint32_t stream, uint32_t first_group, int64_t n_groups) {
  const __m256i mul0 = _mm256_set1_epi32(int32_t(kPhiloxMul0));
  const __m256i mul1 = _mm256_set1_epi32(int32_t(kPhiloxMul1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t g = 0;
  for (; g + 8 <= n_groups; g += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(int32_t(first_group + uint32_t(g))), lane);
    __m256i c1 = _mm256_set1_epi32(int32_t(stream));
    __m256i c2 = _mm256_set1_epi32(int32_t(uint32_t(sample)));
    __m256i c3 = _mm256_set1_epi32(int32_t(uint32_t(sample >> 32)));
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int round = 0; round < 10; ++round) {
      __m256i high0, low0, high1, low1;
      mulhilo8(c0, mul0, high0, low0);
      mulhilo8(c2, mul1, high1, low1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(high1, c1), _mm256_set1_epi32(int32_t(k0)));
      c1 = low1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(high0, c3), _mm256_set1_epi32(int32_t(k1)));
      c3 = low0;
      k0 += kPhiloxWeyl0;
      k1 += kPhiloxWeyl1;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w0 + g), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w1 + g), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w2 + g), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w3 + g), c3);
  }
  philox_words_loop(words, key, sample, stream, first_group, g, n_groups);  // the last < 8 groups
}

__attribute__((target("avx2"))) void fill_normals_avx2(float* normals /* [4 n_groups] */, PhiloxKey key,
                                                       uint64_t sample, uint32_t stream, uint32_t first_group,
                                                       int64_t n_groups) {
  PhiloxWordArrays words;
  philox_words_avx2(words, key, sample, stream, first_group, n_groups);
  box_muller_loop(words, normals, n_groups);
}
#endif

using FillNormals = void (*)(float*, PhiloxKey, uint64_t, uint32_t, uint32_t, int64_t);

FillNormals fill_normals_for(SimdLevel level) {
#if QMIA_X86_DISPATCH
  if (level == SimdLevel::kAvx2) return fill_normals_avx2;
#else
  (void)level;
#endif
  return fill_normals_generic;
}

std::atomic<int> g_forced_simd{-1};  // -1: the best the CPU supports

SimdLevel best_simd_level() {
#if QMIA_X86_DISPATCH
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return SimdLevel::kAvx2;
#endif
  return SimdLevel::kGeneric;
}

void fill_normals(float* normals /* [4 n_groups] */, PhiloxKey key, uint64_t sample, uint32_t stream, uint32_t first_group,
                  int64_t n_groups) {
  fill_normals_for(active_simd_level())(normals, key, sample, stream, first_group, n_groups);
}

// The normals of one chunk of a row: elements [chunk_start, chunk_start + length).
void chunk_normals(float* normals /* [kReduceChunk] */, PhiloxKey key, uint64_t sample, uint32_t stream,
                   int64_t chunk_start, int64_t length) {
  fill_normals(normals, key, sample, stream, uint32_t(chunk_start / 4), (length + 3) / 4);
}

// Steps 2 and 3 of the order in row_reduce.h over terms[0 .. length).
float chunk_sum(const float* terms /* [length <= kReduceChunk] */, int64_t length) {
  alignas(64) float lanes[kReduceLanes];
  for (int m = 0; m < kReduceLanes; ++m) lanes[m] = 0.0f;
  for (int step = 0; step < kReduceSteps; ++step) {
    const int64_t base = int64_t(step) * kReduceLanes;
    const int64_t count = std::min<int64_t>(kReduceLanes, length - base);
    if (count <= 0) break;
    const float* step_terms = terms + base;
#pragma omp simd
    for (int64_t m = 0; m < count; ++m) lanes[m] += step_terms[m];
  }
  return fold_lanes(lanes);
}

// Runs chunk_terms(row, chunk_start, length, terms) for every (row, chunk) and sums
// the terms in the fixed order of row_reduce.h into out[row].
template <typename ChunkTerms>
void reduce_rows(float* out /* [n_rows] */, int64_t n_rows, int64_t row_length, int num_threads, const ChunkTerms& chunk_terms) {
  const int64_t n_chunks = reduce_num_chunks(row_length);
  if (n_chunks == 0) {
    std::fill(out, out + n_rows, 0.0f);  // an empty row sums to zero
    return;
  }
  std::vector<float> chunk_sums(size_t(n_rows * n_chunks));
  float* sums = chunk_sums.data();
  parallel_tasks(n_rows * n_chunks, std::min(row_length, kReduceChunk), num_threads, [&](int64_t task) {
    const int64_t row = task / n_chunks;
    const int64_t chunk_start = (task - row * n_chunks) * kReduceChunk;
    const int64_t length = std::min(kReduceChunk, row_length - chunk_start);
    alignas(64) float terms[kReduceChunk];
    chunk_terms(row, chunk_start, length, terms);
    sums[task] = chunk_sum(terms, length);
  });
  for (int64_t row = 0; row < n_rows; ++row) out[row] = combine_chunk_sums(sums + row * n_chunks, n_chunks);
}

// terms[k] = loaded value of logical element chunk_start + k of a row (row_data: start of the row).
template <typename S>
void gather_chunk(const S* row_data /* [D] */, const RowLayout& layout, int64_t chunk_start, int64_t length,
                  float* values /* [length] */) {
  for_each_run(layout, chunk_start, chunk_start + length,
               [&](int64_t logical, int64_t count, int64_t memory, int64_t stride) {
                 float* dst = values + (logical - chunk_start);
                 const S* src = row_data + memory;
                 if (stride == 1) {
#pragma omp simd
                   for (int64_t k = 0; k < count; ++k) dst[k] = load_float(src + k);
                 } else {
                   for (int64_t k = 0; k < count; ++k) dst[k] = load_float(src + k * stride);
                 }
               });
}

template <typename S>
void scatter_chunk(S* row_data /* [D] */, const RowLayout& layout, int64_t chunk_start, int64_t length,
                   const float* values /* [length] */) {
  for_each_run(layout, chunk_start, chunk_start + length,
               [&](int64_t logical, int64_t count, int64_t memory, int64_t stride) {
                 const float* src = values + (logical - chunk_start);
                 S* dst = row_data + memory;
                 if (stride == 1) {
#pragma omp simd
                   for (int64_t k = 0; k < count; ++k) store_float(dst + k, src[k]);
                 } else {
                   for (int64_t k = 0; k < count; ++k) store_float(dst + k * stride, src[k]);
                 }
               });
}

void check_noise_args(int64_t n_rows, const RowLayout& layout, uint64_t offset) {
  check_size(n_rows, "n_rows");
  check_layout(layout);
  check_rows_times_length(n_rows, layout.row_length);
  require(offset <= UINT64_MAX - uint64_t(n_rows), "offset + n_rows overflows the 64-bit sample index");
}

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

void philox_uint32(uint32_t* out /* [n_rows, n_groups, 4] */, int64_t n_rows, int64_t n_groups, uint64_t seed, uint64_t offset, uint32_t stream,
                   int num_threads) {
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
      const PhiloxWords w = philox4x32_10(uint32_t(g), stream, uint32_t(sample), uint32_t(sample >> 32), key.k0, key.k1);
      row_out[4 * g + 0] = w.w0;
      row_out[4 * g + 1] = w.w1;
      row_out[4 * g + 2] = w.w2;
      row_out[4 * g + 3] = w.w3;
    }
  });
}

void philox_normal(void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed, uint64_t offset,
                   uint32_t stream, int num_threads) {
  check_dtype(dtype);
  check_noise_args(n_rows, layout, offset);
  const int64_t row_length = layout.row_length;
  check_pointer(out, n_rows * row_length, "out");
  if (n_rows == 0 || row_length == 0) return;
  const PhiloxKey key = philox_key(seed);
  const int64_t n_chunks = reduce_num_chunks(row_length);
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    S* data = static_cast<S*>(out);
    parallel_tasks(n_rows * n_chunks, std::min(row_length, kReduceChunk), num_threads, [&](int64_t task) {
      const int64_t row = task / n_chunks;
      const int64_t chunk_start = (task - row * n_chunks) * kReduceChunk;
      const int64_t length = std::min(kReduceChunk, row_length - chunk_start);
      alignas(64) float normals[kReduceChunk];
      chunk_normals(normals, key, offset + uint64_t(row), stream, chunk_start, length);
      scatter_chunk(data + row * row_length, layout, chunk_start, length, normals);
    });
  });
}

void noise_inject(const void* x0 /* [n_rows, D] */, const float* a /* [n_rows] */, const float* b /* [n_rows] */,
                  void* x_t /* [n_rows, D] */, void* eps_out /* [n_rows, D] or null */, int32_t dtype,
                  int64_t n_rows, RowLayout layout, uint64_t seed, uint64_t offset, uint32_t stream,
                  int num_threads) {
  check_dtype(dtype);
  check_noise_args(n_rows, layout, offset);
  const int64_t row_length = layout.row_length;
  check_pointer(x0, n_rows * row_length, "x0");
  check_pointer(x_t, n_rows * row_length, "x_t");
  check_pointer(a, n_rows, "a");
  check_pointer(b, n_rows, "b");
  if (n_rows == 0 || row_length == 0) return;
  const PhiloxKey key = philox_key(seed);
  const int64_t n_chunks = reduce_num_chunks(row_length);
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* x0_data = static_cast<const S*>(x0);
    S* x_t_data = static_cast<S*>(x_t);
    S* eps_data = static_cast<S*>(eps_out);
    parallel_tasks(n_rows * n_chunks, std::min(row_length, kReduceChunk), num_threads, [&](int64_t task) {
      const int64_t row = task / n_chunks;
      const int64_t chunk_start = (task - row * n_chunks) * kReduceChunk;
      const int64_t length = std::min(kReduceChunk, row_length - chunk_start);
      alignas(64) float normals[kReduceChunk];
      alignas(64) float values[kReduceChunk];
      chunk_normals(normals, key, offset + uint64_t(row), stream, chunk_start, length);
      gather_chunk(x0_data + row * row_length, layout, chunk_start, length, values);
      const float coef_x = a[row], coef_eps = b[row];
#pragma omp simd
      for (int64_t k = 0; k < length; ++k) values[k] = affine_combine(coef_x, values[k], coef_eps, normals[k]);
      scatter_chunk(x_t_data + row * row_length, layout, chunk_start, length, values);
      if (eps_data) scatter_chunk(eps_data + row * row_length, layout, chunk_start, length, normals);
    });
  });
}

void eps_sq_error(const void* eps_pred /* [n_rows, D] */, float* out /* [n_rows] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed,
                  uint64_t offset, uint32_t stream, int num_threads) {
  check_dtype(dtype);
  check_noise_args(n_rows, layout, offset);
  const int64_t row_length = layout.row_length;
  check_pointer(eps_pred, n_rows * row_length, "eps_pred");
  check_pointer(out, n_rows, "out");
  if (n_rows == 0) return;
  const PhiloxKey key = philox_key(seed);
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* pred = static_cast<const S*>(eps_pred);
    reduce_rows(out, n_rows, row_length, num_threads,
                [&](int64_t row, int64_t chunk_start, int64_t length, float* terms) {
                  alignas(64) float normals[kReduceChunk];
                  chunk_normals(normals, key, offset + uint64_t(row), stream, chunk_start, length);
                  gather_chunk(pred + row * row_length, layout, chunk_start, length, terms);
#pragma omp simd
                  for (int64_t k = 0; k < length; ++k) terms[k] = squared_difference(terms[k], normals[k]);
                });
  });
}

void ddim_step(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */, const float* c1 /* [n_rows] */,
               const float* c2 /* [n_rows] */, void* out /* [n_rows, D] */, int32_t dtype,
               int64_t n_rows, int64_t row_length, int num_threads) {
  check_dtype(dtype);
  check_size(n_rows, "n_rows");
  check_size(row_length, "row_length");
  check_rows_times_length(n_rows, row_length);
  check_pointer(x, n_rows * row_length, "x");
  check_pointer(eps, n_rows * row_length, "eps");
  check_pointer(out, n_rows * row_length, "out");
  check_pointer(c1, n_rows, "c1");
  check_pointer(c2, n_rows, "c2");
  if (n_rows == 0 || row_length == 0) return;
  const int64_t n_pieces = (row_length + kElementwiseChunk - 1) / kElementwiseChunk;
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* x_data = static_cast<const S*>(x);
    const S* eps_data = static_cast<const S*>(eps);
    S* out_data = static_cast<S*>(out);
    parallel_tasks(n_rows * n_pieces, std::min(row_length, kElementwiseChunk), num_threads, [&](int64_t task) {
      const int64_t row = task / n_pieces;
      const int64_t start = row * row_length + (task - row * n_pieces) * kElementwiseChunk;
      const int64_t count = std::min(kElementwiseChunk, (row + 1) * row_length - start);
      const float coef_x = c1[row], coef_eps = c2[row];
      const S* xs = x_data + start;
      const S* es = eps_data + start;
      S* os = out_data + start;
#pragma omp simd
      for (int64_t k = 0; k < count; ++k)
        store_float(os + k, affine_combine(coef_x, load_float(xs + k), coef_eps, load_float(es + k)));
    });
  });
}

void ddim_step_sqerr(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */, const float* c1 /* [n_rows] */,
                     const float* c2 /* [n_rows] */, const void* ref /* [n_rows, D] */, float* out /* [n_rows] */,
                     int32_t dtype, int64_t n_rows, RowLayout layout, int num_threads) {
  check_dtype(dtype);
  check_size(n_rows, "n_rows");
  check_layout(layout);
  const int64_t row_length = layout.row_length;
  check_rows_times_length(n_rows, row_length);
  check_pointer(x, n_rows * row_length, "x");
  check_pointer(eps, n_rows * row_length, "eps");
  check_pointer(ref, n_rows * row_length, "ref");
  check_pointer(c1, n_rows, "c1");
  check_pointer(c2, n_rows, "c2");
  check_pointer(out, n_rows, "out");
  if (n_rows == 0) return;
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* x_data = static_cast<const S*>(x);
    const S* eps_data = static_cast<const S*>(eps);
    const S* ref_data = static_cast<const S*>(ref);
    reduce_rows(out, n_rows, row_length, num_threads,
                [&](int64_t row, int64_t chunk_start, int64_t length, float* terms) {
                  alignas(64) float eps_values[kReduceChunk];
                  alignas(64) float ref_values[kReduceChunk];
                  const int64_t base = row * row_length;
                  gather_chunk(x_data + base, layout, chunk_start, length, terms);
                  gather_chunk(eps_data + base, layout, chunk_start, length, eps_values);
                  gather_chunk(ref_data + base, layout, chunk_start, length, ref_values);
                  const float coef_x = c1[row], coef_eps = c2[row];
#pragma omp simd
                  for (int64_t k = 0; k < length; ++k)
                    terms[k] = ddim_step_sqerr_term(coef_x, terms[k], coef_eps, eps_values[k], ref_values[k]);
                });
  });
}

void pnorm_error(const void* a /* [n_rows, D] */, const void* b /* [n_rows, D] */, float* out /* [n_rows] */,
                 int32_t dtype, int64_t n_rows, RowLayout layout, float p,
                 int num_threads) {
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
  const int32_t code = power_code(p);
  dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const S* a_data = static_cast<const S*>(a);
    const S* b_data = static_cast<const S*>(b);
    reduce_rows(out, n_rows, row_length, num_threads,
                [&](int64_t row, int64_t chunk_start, int64_t length, float* terms) {
                  alignas(64) float b_values[kReduceChunk];
                  const int64_t base = row * row_length;
                  gather_chunk(a_data + base, layout, chunk_start, length, terms);
                  gather_chunk(b_data + base, layout, chunk_start, length, b_values);
                  switch (code) {
                    case kPowerTwo:
#pragma omp simd
                      for (int64_t k = 0; k < length; ++k) terms[k] = pnorm_term(terms[k], b_values[k], kPowerTwo, p);
                      break;
                    case kPowerFour:
#pragma omp simd
                      for (int64_t k = 0; k < length; ++k) terms[k] = pnorm_term(terms[k], b_values[k], kPowerFour, p);
                      break;
                    default:
                      for (int64_t k = 0; k < length; ++k) terms[k] = pnorm_term(terms[k], b_values[k], code, p);
                  }
                });
  });
}

void vote(const void* scores /* [n_samples] strided */, const void* thresholds /* [n_models, n_samples] strided */,
          int32_t dtype, int64_t n_samples, int64_t n_models,
          int64_t score_stride, int64_t model_stride, int64_t sample_stride, int32_t* votes /* [n_samples] */,
          uint8_t* decision /* [n_samples] */, float* margin /* [n_samples] */, int num_threads) {
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
