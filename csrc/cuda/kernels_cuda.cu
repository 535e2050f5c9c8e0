// CUDA kernels and their launchers: the formulas of csrc/common on device pointers, one thread per 4 elements.
#include "cuda/kernels_cuda.h"

#include <algorithm>

#include "common/ddim_step.h"
#include "common/kernel_checks.h"
#include "common/philox.h"
#include "common/row_reduce.h"
#include "common/storage_types.h"
#include "common/vote.h"
#include "cuda/launch_check.h"

namespace qmia {
namespace cuda {
namespace {

constexpr int kBlock = 256;  // the reduction's lane layout (4 lanes per thread) needs exactly 256
static_assert(kBlock * 4 == kReduceLanes, "reduce kernel maps 4 lanes to each thread");
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest

int64_t blocks_for(int64_t work_items) {
  return std::max<int64_t>(1, std::min<int64_t>((work_items + kBlock - 1) / kBlock, kMaxBlocks));
}

// ---- 4-element loads and stores ---------------------------------------------------
// Four consecutive logical elements starting at e0 (a multiple of 4). In C order and
// when aligned they are one 16-byte (float) or 8-byte (16-bit types) access; otherwise
// element by element through the layout. Elements past the row's end read as 0.

template <typename S>
struct Packed4;
template <>
struct Packed4<float> {
  using type = float4;
};
template <>
struct Packed4<bf16_t> {
  using type = uint2;
};
template <>
struct Packed4<f16_t> {
  using type = uint2;
};

__device__ __forceinline__ void unpack4(float4 packed, const float* /* overload tag */, float v[4]) {
  v[0] = packed.x;
  v[1] = packed.y;
  v[2] = packed.z;
  v[3] = packed.w;
}

template <typename S>
__device__ __forceinline__ void unpack4(uint2 packed, const S* /* overload tag */, float v[4]) {
  v[0] = load_float_bits<S>(uint16_t(packed.x));
  v[1] = load_float_bits<S>(uint16_t(packed.x >> 16));
  v[2] = load_float_bits<S>(uint16_t(packed.y));
  v[3] = load_float_bits<S>(uint16_t(packed.y >> 16));
}

__device__ __forceinline__ float4 pack4(const float v[4], float* /* overload tag */) {
  return make_float4(v[0], v[1], v[2], v[3]);
}

template <typename S>
__device__ __forceinline__ uint2 pack4(const float v[4], S* /* overload tag */) {
  const uint32_t b0 = store_float_bits<S>(v[0]), b1 = store_float_bits<S>(v[1]);
  const uint32_t b2 = store_float_bits<S>(v[2]), b3 = store_float_bits<S>(v[3]);
  return make_uint2(b0 | (b1 << 16), b2 | (b3 << 16));
}

template <typename S>
__device__ __forceinline__ bool vector_ok(const S* p /* [4] at element e0 */, const RowLayout& layout, int64_t e0) {
  return !layout.channels_last && e0 + 4 <= layout.row_length &&
         (reinterpret_cast<uintptr_t>(p) & (4 * sizeof(S) - 1)) == 0;
}

template <typename S>
__device__ __forceinline__ void load4(const S* row /* [D] */, const RowLayout& layout, int64_t e0, float v[4]) {
  const S* p = row + e0;
  if (vector_ok(p, layout, e0)) {
    unpack4(*reinterpret_cast<const typename Packed4<S>::type*>(p), p, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t e = e0 + j;
    v[j] = e < layout.row_length ? load_float(row + layout.memory_offset(e)) : 0.0f;
  }
}

template <typename S>
__device__ __forceinline__ void store4(S* row /* [D] */, const RowLayout& layout, int64_t e0, const float v[4]) {
  S* p = row + e0;
  if (vector_ok(p, layout, e0)) {
    *reinterpret_cast<typename Packed4<S>::type*>(p) = pack4(v, p);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t e = e0 + j;
    if (e < layout.row_length) store_float(row + layout.memory_offset(e), v[j]);
  }
}

// ---- elementwise kernels: one thread per group of 4 logical elements ---------------

__global__ void philox_uint32_kernel(uint32_t* out /* [n_rows, n_groups, 4] */, int64_t n_rows, int64_t n_groups,
                                     PhiloxKey key, uint64_t offset, uint32_t stream_id) {
  const int64_t total = n_rows * n_groups;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / n_groups;
    const int64_t group = idx - row * n_groups;
    store_philox_words(out + 4 * idx, key, offset + uint64_t(row), stream_id, uint32_t(group));
  }
}

// kInject = false: out = eps (philox_normal). kInject = true: out = a x0 + b eps, and
// eps_out (if not null) = eps.
template <typename S, bool kInject>
__global__ void noise_kernel(const S* x0 /* [n_rows, D] */, RowCoefficient a /* [n_rows] or scalar */,
                             RowCoefficient b /* [n_rows] or scalar */, S* out /* [n_rows, D] */,
                             S* eps_out /* [n_rows, D] or null */, int64_t n_rows, RowLayout layout,
                             int64_t groups_per_row, PhiloxKey key, SampleIndex samples, uint32_t stream_id) {
  const int64_t total = n_rows * groups_per_row;
  const int64_t row_length = layout.row_length;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / groups_per_row;
    const int64_t group = idx - row * groups_per_row;
    const int64_t e0 = 4 * group;
    float eps[4];
    philox_normal4(key, samples.at(row), stream_id, uint32_t(group), eps[0], eps[1], eps[2], eps[3]);
    const int64_t base = row * row_length;
    if (kInject) {
      float x[4];
      load4(x0 + base, layout, e0, x);
      const float coef_x = a.at(row), coef_eps = b.at(row);
#pragma unroll
      for (int j = 0; j < 4; ++j) x[j] = affine_combine(coef_x, x[j], coef_eps, eps[j]);
      store4(out + base, layout, e0, x);
      if (eps_out != nullptr) store4(eps_out + base, layout, e0, eps);
    } else {
      store4(out + base, layout, e0, eps);
    }
  }
}

template <typename S>
__global__ void ddim_step_kernel(const S* x /* [n_rows, D] */, const S* eps /* [n_rows, D] */,
                                 RowCoefficient c1 /* [n_rows] or scalar */,
                                 RowCoefficient c2 /* [n_rows] or scalar */, S* out /* [n_rows, D] */, int64_t n_rows,
                                 RowLayout layout, int64_t groups_per_row) {
  const int64_t total = n_rows * groups_per_row;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / groups_per_row;
    const int64_t e0 = 4 * (idx - row * groups_per_row);
    const int64_t base = row * layout.row_length;
    float xv[4], ev[4];
    load4(x + base, layout, e0, xv);
    load4(eps + base, layout, e0, ev);
    const float coef_x = c1.at(row), coef_eps = c2.at(row);
#pragma unroll
    for (int j = 0; j < 4; ++j) xv[j] = affine_combine(coef_x, xv[j], coef_eps, ev[j]);
    store4(out + base, layout, e0, xv);
  }
}

// ---- row reductions ---------------------------------------------------------------
// Term functors: terms4(layout, row, e0, t) fills the terms of logical elements e0 .. e0 + 3
// of `row`. The layout is the reduction's (launch_reduce), shared by all of its inputs.

// The four elements at e0 of row `row` of a [n_rows, D] tensor.
template <typename S>
__device__ __forceinline__ void load_row4(const S* data /* [n_rows, D] */, const RowLayout& layout, int64_t row,
                                          int64_t e0, float v[4]) {
  load4(data + row * layout.row_length, layout, e0, v);
}

template <typename S>
struct EpsSqTerms {
  const S* eps_pred;
  PhiloxKey key;
  SampleIndex samples;
  uint32_t stream_id;
  __device__ __forceinline__ void terms4(const RowLayout& layout, int64_t row, int64_t e0, float t[4]) const {
    float eps[4];
    philox_normal4(key, samples.at(row), stream_id, uint32_t(e0 / 4), eps[0], eps[1], eps[2], eps[3]);
    load_row4(eps_pred, layout, row, e0, t);
#pragma unroll
    for (int j = 0; j < 4; ++j) t[j] = squared_difference(t[j], eps[j]);
  }
};

template <typename S>
struct DdimSqerrTerms {
  const S* x;
  const S* eps;
  const S* ref;
  RowCoefficient c1;
  RowCoefficient c2;
  __device__ __forceinline__ void terms4(const RowLayout& layout, int64_t row, int64_t e0, float t[4]) const {
    float ev[4], rv[4];
    load_row4(x, layout, row, e0, t);
    load_row4(eps, layout, row, e0, ev);
    load_row4(ref, layout, row, e0, rv);
    const float coef_x = c1.at(row), coef_eps = c2.at(row);
#pragma unroll
    for (int j = 0; j < 4; ++j) t[j] = ddim_step_sqerr_term(coef_x, t[j], coef_eps, ev[j], rv[j]);
  }
};

template <typename S>
struct PnormTerms {
  const S* a;
  const S* b;
  int32_t power;
  float p;
  __device__ __forceinline__ void terms4(const RowLayout& layout, int64_t row, int64_t e0, float t[4]) const {
    float bv[4];
    load_row4(a, layout, row, e0, t);
    load_row4(b, layout, row, e0, bv);
#pragma unroll
    for (int j = 0; j < 4; ++j) t[j] = pnorm_term(t[j], bv[j], power, p);
  }
};

// One block per (row, chunk); thread l owns lanes 4l .. 4l + 3, i.e. the elements
// chunk_start + 1024 k + 4l + j, and the folds follow row_reduce.h exactly.
template <typename Terms>
__global__ void __launch_bounds__(kBlock)
    reduce_chunks_kernel(Terms terms, RowLayout layout, int64_t n_rows, int64_t n_chunks,
                         float* chunk_sums /* [n_rows, n_chunks], unused when n_chunks == 1 */,
                         float* out /* [n_rows], written when n_chunks == 1 */) {
  __shared__ float lanes[kReduceLanes];
  const int tid = threadIdx.x;
  const int64_t row_length = layout.row_length;
  const int64_t n_tasks = n_rows * n_chunks;
  for (int64_t task = blockIdx.x; task < n_tasks; task += gridDim.x) {
    const int64_t row = task / n_chunks;
    const int64_t chunk_start = (task - row * n_chunks) * kReduceChunk;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int step = 0; step < kReduceSteps; ++step) {
      const int64_t e0 = chunk_start + int64_t(step) * kReduceLanes + 4 * tid;
      if (e0 < row_length) {
        float t[4];
        terms.terms4(layout, row, e0, t);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (e0 + j < row_length) acc[j] += t[j];
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) lanes[4 * tid + j] = acc[j];
    __syncthreads();
    lanes[tid] += lanes[tid + 512];
    lanes[tid + 256] += lanes[tid + 768];
    __syncthreads();
    for (int stride = 256; stride >= 32; stride /= 2) {
      if (tid < stride) lanes[tid] += lanes[tid + stride];
      __syncthreads();
    }
    if (tid < 32) {
      float v = lanes[tid];
      // lane l + s of the tree sits in warp lane l + s: shuffles keep the same pairs.
      for (int stride = 16; stride >= 1; stride /= 2) v += __shfl_down_sync(0xFFFFFFFFu, v, stride);
      if (tid == 0) {
        if (n_chunks == 1) {
          out[row] = combine_chunk_sums(&v, 1);
        } else {
          chunk_sums[task] = v;
        }
      }
    }
    __syncthreads();  // lanes are reused by the next task
  }
}

__global__ void combine_chunks_kernel(const float* chunk_sums /* [n_rows, n_chunks] */, int64_t n_rows,
                                      int64_t n_chunks, float* out /* [n_rows] */) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < n_rows;
       row += int64_t(gridDim.x) * blockDim.x)
    out[row] = combine_chunk_sums(chunk_sums + row * n_chunks, n_chunks);
}

template <typename Terms>
cudaError_t launch_reduce(const Terms& terms, const RowLayout& layout, float* out /* [n_rows] */,
                          float* workspace /* [n_rows, n_chunks] when n_chunks > 1 */, int64_t n_rows,
                          cudaStream_t stream) {
  const int64_t n_chunks = reduce_num_chunks(layout.row_length);
  if (n_chunks == 0) {
    // Empty rows sum to +0.0, whose bits are all zero.
    QMIA_RETURN_IF_ERROR(cudaMemsetAsync(out, 0, size_t(n_rows) * sizeof(float), stream));
    return cudaSuccess;
  }
  const int64_t n_tasks = n_rows * n_chunks;
  const unsigned grid = unsigned(std::min<int64_t>(n_tasks, kMaxBlocks));
  reduce_chunks_kernel<<<grid, kBlock, 0, stream>>>(terms, layout, n_rows, n_chunks, workspace, out);
  QMIA_LAUNCH_CHECK();
  if (n_chunks > 1) {
    combine_chunks_kernel<<<unsigned(blocks_for(n_rows)), kBlock, 0, stream>>>(workspace, n_rows, n_chunks, out);
    QMIA_LAUNCH_CHECK();
  }
  return cudaSuccess;
}

// ---- vote ------------------------------------------------------------------------

template <typename S>
__global__ void vote_kernel(const S* scores /* [n_samples] strided */,
                            const S* thresholds /* [n_models, n_samples] strided */, int64_t n_samples,
                            int64_t n_models, int64_t score_stride, int64_t model_stride, int64_t sample_stride,
                            int32_t* votes /* [n_samples] */, uint8_t* decision /* [n_samples] */,
                            VoteMargin<S>* margin /* [n_samples] */) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_samples;
       i += int64_t(gridDim.x) * blockDim.x)
    vote_sample(scores, thresholds, i, n_models, score_stride, model_stride, sample_stride, votes, decision, margin);
}

void check_workspace(const float* workspace /* [reduce_workspace_elements] */, int64_t n_rows, int64_t row_length) {
  check_pointer(workspace, reduce_workspace_elements(n_rows, row_length), "workspace");
}

}  // namespace

int64_t reduce_workspace_elements(int64_t n_rows, int64_t row_length) {
  const int64_t n_chunks = reduce_num_chunks(row_length);
  return n_chunks > 1 ? n_rows * n_chunks : 0;
}

cudaError_t philox_uint32(uint32_t* out /* [n_rows, n_groups, 4] */, int64_t n_rows, int64_t n_groups, uint64_t seed,
                          uint64_t offset, uint32_t stream_id, cudaStream_t stream) {
  check_philox_uint32(out, n_rows, n_groups);
  if (n_rows == 0 || n_groups == 0) return cudaSuccess;
  philox_uint32_kernel<<<unsigned(blocks_for(n_rows * n_groups)), kBlock, 0, stream>>>(out, n_rows, n_groups,
                                                                                        philox_key(seed), offset,
                                                                                        stream_id);
  QMIA_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t philox_normal(void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, RowLayout layout, uint64_t seed,
                          SampleIndex samples, uint32_t stream_id, cudaStream_t stream) {
  check_philox_normal(out, dtype, n_rows, layout, samples, SampleMemory::kDevice);
  if (n_rows == 0 || layout.row_length == 0) return cudaSuccess;
  const int64_t groups_per_row = (layout.row_length + 3) / 4;
  return dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    noise_kernel<S, false><<<unsigned(blocks_for(n_rows * groups_per_row)), kBlock, 0, stream>>>(
        nullptr, RowCoefficient{nullptr, 0.0f}, RowCoefficient{nullptr, 0.0f}, static_cast<S*>(out), nullptr, n_rows,
        layout, groups_per_row, philox_key(seed), samples, stream_id);
    QMIA_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t noise_inject(const void* x0 /* [n_rows, D] */, RowCoefficient a /* [n_rows] or scalar */,
                         RowCoefficient b /* [n_rows] or scalar */, void* x_t /* [n_rows, D] */,
                         void* eps_out /* [n_rows, D] or null */, int32_t dtype, int64_t n_rows, RowLayout layout,
                         uint64_t seed, SampleIndex samples, uint32_t stream_id, cudaStream_t stream) {
  check_noise_inject(x0, a, b, x_t, dtype, n_rows, layout, samples, SampleMemory::kDevice);
  if (n_rows == 0 || layout.row_length == 0) return cudaSuccess;
  const int64_t groups_per_row = (layout.row_length + 3) / 4;
  return dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    noise_kernel<S, true><<<unsigned(blocks_for(n_rows * groups_per_row)), kBlock, 0, stream>>>(
        static_cast<const S*>(x0), a, b, static_cast<S*>(x_t), static_cast<S*>(eps_out), n_rows, layout,
        groups_per_row, philox_key(seed), samples, stream_id);
    QMIA_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t eps_sq_error(const void* eps_pred /* [n_rows, D] */, float* out /* [n_rows] */,
                         float* workspace /* [reduce_workspace_elements] */, int32_t dtype, int64_t n_rows,
                         RowLayout layout, uint64_t seed, SampleIndex samples, uint32_t stream_id,
                         cudaStream_t stream) {
  check_eps_sq_error(eps_pred, out, dtype, n_rows, layout, samples, SampleMemory::kDevice);
  check_workspace(workspace, n_rows, layout.row_length);
  if (n_rows == 0) return cudaSuccess;
  return dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const EpsSqTerms<S> terms{static_cast<const S*>(eps_pred), philox_key(seed), samples, stream_id};
    return launch_reduce(terms, layout, out, workspace, n_rows, stream);
  });
}

cudaError_t ddim_step(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                      RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                      void* out /* [n_rows, D] */, int32_t dtype, int64_t n_rows, int64_t row_length,
                      cudaStream_t stream) {
  check_ddim_step(x, eps, c1, c2, out, dtype, n_rows, row_length);
  if (n_rows == 0 || row_length == 0) return cudaSuccess;
  RowLayout layout;
  layout.row_length = row_length;  // memory order is all an elementwise step needs
  const int64_t groups_per_row = (row_length + 3) / 4;
  return dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    ddim_step_kernel<S><<<unsigned(blocks_for(n_rows * groups_per_row)), kBlock, 0, stream>>>(
        static_cast<const S*>(x), static_cast<const S*>(eps), c1, c2, static_cast<S*>(out), n_rows, layout,
        groups_per_row);
    QMIA_LAUNCH_CHECK();
    return cudaSuccess;
  });
}

cudaError_t ddim_step_sqerr(const void* x /* [n_rows, D] */, const void* eps /* [n_rows, D] */,
                            RowCoefficient c1 /* [n_rows] or scalar */, RowCoefficient c2 /* [n_rows] or scalar */,
                            const void* ref /* [n_rows, D] */, float* out /* [n_rows] */,
                            float* workspace /* [reduce_workspace_elements] */, int32_t dtype, int64_t n_rows,
                            RowLayout layout, cudaStream_t stream) {
  check_ddim_step_sqerr(x, eps, c1, c2, ref, out, dtype, n_rows, layout);
  check_workspace(workspace, n_rows, layout.row_length);
  if (n_rows == 0) return cudaSuccess;
  return dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const DdimSqerrTerms<S> terms{static_cast<const S*>(x), static_cast<const S*>(eps), static_cast<const S*>(ref),
                                  c1, c2};
    return launch_reduce(terms, layout, out, workspace, n_rows, stream);
  });
}

cudaError_t pnorm_error(const void* a /* [n_rows, D] */, const void* b /* [n_rows, D] */, float* out /* [n_rows] */,
                        float* workspace /* [reduce_workspace_elements] */, int32_t dtype, int64_t n_rows,
                        RowLayout layout, float p, cudaStream_t stream) {
  check_pnorm_error(a, b, out, dtype, n_rows, layout, p);
  check_workspace(workspace, n_rows, layout.row_length);
  if (n_rows == 0) return cudaSuccess;
  return dispatch_storage(dtype, [&](auto tag) {
    using S = typename decltype(tag)::type;
    const PnormTerms<S> terms{static_cast<const S*>(a), static_cast<const S*>(b), power_code(p), p};
    return launch_reduce(terms, layout, out, workspace, n_rows, stream);
  });
}

cudaError_t vote(const void* scores /* [n_samples] strided */,
                 const void* thresholds /* [n_models, n_samples] strided */, int32_t dtype, int64_t n_samples,
                 int64_t n_models, int64_t score_stride, int64_t model_stride, int64_t sample_stride,
                 int32_t* votes /* [n_samples] */, uint8_t* decision /* [n_samples] */,
                 void* margin /* [n_samples] */, cudaStream_t stream) {
  check_vote(scores, thresholds, dtype, n_samples, n_models, score_stride, model_stride, sample_stride, votes,
             decision, margin);
  if (n_samples == 0) return cudaSuccess;
  auto launch = [&](auto tag) {
    using S = typename decltype(tag)::type;
    vote_kernel<S><<<unsigned(blocks_for(n_samples)), kBlock, 0, stream>>>(
        static_cast<const S*>(scores), static_cast<const S*>(thresholds), n_samples, n_models, score_stride,
        model_stride, sample_stride, votes, decision, static_cast<VoteMargin<S>*>(margin));
    QMIA_LAUNCH_CHECK();
    return cudaSuccess;
  };
  return dispatch_storage</*kAllowFloat64=*/true>(dtype, launch);
}

}  // namespace cuda
}  // namespace qmia
