// CUDA GroupNorm(+add, +SiLU) of NHWC data: a statistics pass per (image, pixel chunk), a per-group finish, one vectorised output pass.
#include "cuda/group_norm_cuda.h"

#include <algorithm>
#include <type_traits>

#include "common/group_norm.h"
#include "common/kernel_checks.h"
#include "common/storage_types.h"
#include "cuda/launch_check.h"

namespace qmia {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxVector = 8;                       // 16 bytes of 16-bit storage
constexpr int64_t kMaxBlocks = int64_t(1) << 20;    // grid-stride loops cover the rest

// Workspace (floats): partial sums [n, n_chunks, 2, channels], pivots [n, channels],
// then the output constants [n, 4, channels] (mean_hi, mean_lo, scale, beta rows: see
// GroupNormChannel). Every region starts at a multiple of channels floats, so vector
// reads of it stay 16-byte aligned when channels % 4 == 0.
constexpr int kConstantRows = 4;

struct Workspace {
  float* partial;    // [n, n_chunks, 2, channels]
  float* pivot;      // [n, channels]
  float* constants;  // [n, kConstantRows, channels]
};

Workspace split_workspace(float* base /* [group_norm_workspace_elements] */, int64_t n, int64_t channels,
                          int64_t n_chunks) {
  Workspace w;
  w.partial = base;
  w.pivot = w.partial + n * n_chunks * 2 * channels;
  w.constants = w.pivot + n * channels;
  return w;
}

// ---- V consecutive channels at once: one 16-byte access when V > 1 ------------------

template <typename S, int V>
__device__ __forceinline__ void load_vector(const S* p /* [V], 16-byte aligned when V > 1 */, float v[V]) {
  if constexpr (V == 1) {
    v[0] = load_float(p);
  } else if constexpr (std::is_same<S, float>::value) {
    static_assert(V == 4, "float32 vectors hold 4 channels");
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  } else {
    static_assert(V == 8, "16-bit vectors hold 8 channels");
    const uint4 q = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v[2 * k] = load_float_bits<S>(uint16_t(words[k]));
      v[2 * k + 1] = load_float_bits<S>(uint16_t(words[k] >> 16));
    }
  }
}

template <typename S, int V>
__device__ __forceinline__ void store_vector(S* p /* [V], 16-byte aligned when V > 1 */, const float v[V]) {
  if constexpr (V == 1) {
    store_float(p, v[0]);
  } else if constexpr (std::is_same<S, float>::value) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    uint32_t words[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) words[k] = store_float_bits<S>(v[2 * k]) | (store_float_bits<S>(v[2 * k + 1]) << 16);
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
  }
}

template <int V>
__device__ __forceinline__ void load_floats(const float* p /* [V], 16-byte aligned when V % 4 == 0 */, float v[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int k = 0; k < V; k += 4) {
      const float4 q = *reinterpret_cast<const float4*>(p + k);
      v[k] = q.x;
      v[k + 1] = q.y;
      v[k + 2] = q.z;
      v[k + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = p[k];
  }
}

// s = x + add for V channels starting at element `at` = (image * pixels + pixel) * channels + c0.
template <typename S, int V, int kAdd>
struct SumLoader {
  const S* x;    // [n, pixels, channels]
  const S* add;  // [n, pixels, channels] (kAddFull), [n, channels] (kAddPerChannel) or unused
  __device__ __forceinline__ void load(int64_t at, const float add_per_channel[V], float s[V]) const {
    load_vector<S, V>(x + at, s);
    if constexpr (kAdd == kAddFull) {
      float a[V];
      load_vector<S, V>(add + at, a);
#pragma unroll
      for (int k = 0; k < V; ++k) s[k] = s[k] + a[k];
    } else if constexpr (kAdd == kAddPerChannel) {
#pragma unroll
      for (int k = 0; k < V; ++k) s[k] = s[k] + add_per_channel[k];
    }
  }
  // The per-channel add of one image's channels c0 .. c0 + V - 1 (zeros for the other kinds).
  __device__ __forceinline__ void load_add_per_channel(int64_t image, int64_t channels, int64_t c0,
                                                       float a[V]) const {
    if constexpr (kAdd == kAddPerChannel) {
      load_vector<S, V>(add + image * channels + c0, a);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) a[k] = 0.0f;
    }
  }
};

// ---- pass 1: per-channel shifted sums over a chunk of pixels ---------------------------
// Threads form a [rows, cols] grid: column j takes the channel vector col_base + j, row r
// the pixels p0 + r, p0 + r + rows, ...; the rows are then folded in shared memory in row
// order. Each channel is shifted by its value at pixel 0 (the pivot, written by chunk 0).
template <typename S, int V, int kAdd>
__global__ void __launch_bounds__(kThreads)
    group_norm_stats_kernel(SumLoader<S, V, kAdd> source, int64_t n, int64_t pixels, int64_t channels,
                            int64_t n_chunks, int64_t chunk_pixels,
                            float* partial /* [n, n_chunks, 2, channels] */, float* pivot /* [n, channels] */) {
  __shared__ float folded[2][kThreads * kMaxVector];
  const int64_t vectors = channels / V;
  const int cols = int(vectors < kThreads ? vectors : kThreads);
  const int rows = kThreads / cols;
  const int col = int(threadIdx.x) % cols, row = int(threadIdx.x) / cols;
  for (int64_t task = blockIdx.x; task < n * n_chunks; task += gridDim.x) {
    const int64_t image = task / n_chunks, chunk = task - image * n_chunks;
    const int64_t p0 = chunk * chunk_pixels, p1 = p0 + chunk_pixels < pixels ? p0 + chunk_pixels : pixels;
    const int64_t image_base = image * pixels * channels;
    for (int64_t col_base = 0; col_base < vectors; col_base += cols) {  // the same trip count in every thread
      const int64_t j = col_base + col;
      float sum1[V], sum2[V];
#pragma unroll
      for (int k = 0; k < V; ++k) sum1[k] = sum2[k] = 0.0f;
      if (row < rows && j < vectors) {
        float add_c[V], first[V];
        source.load_add_per_channel(image, channels, j * V, add_c);
        source.load(image_base + j * V, add_c, first);
        if (chunk == 0 && row == 0) {
#pragma unroll
          for (int k = 0; k < V; ++k) pivot[image * channels + j * V + k] = first[k];
        }
        for (int64_t p = p0 + row; p < p1; p += rows) {
          float s[V];
          source.load(image_base + p * channels + j * V, add_c, s);
#pragma unroll
          for (int k = 0; k < V; ++k) {
            const float d = s[k] - first[k];
            sum1[k] += d;
            sum2[k] += d * d;
          }
        }
      }
      __syncthreads();  // the previous fold has read `folded`
      if (row < rows) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          folded[0][row * cols * V + col * V + k] = sum1[k];
          folded[1][row * cols * V + col * V + k] = sum2[k];
        }
      }
      __syncthreads();
      for (int lane = threadIdx.x; lane < 2 * cols * V; lane += kThreads) {
        const int which = lane / (cols * V), slot = lane - which * cols * V;
        const int64_t c = col_base * V + slot;
        if (c >= channels) continue;
        float total = 0.0f;
        for (int r = 0; r < rows; ++r) total += folded[which][r * cols * V + slot];
        partial[((image * n_chunks + chunk) * 2 + which) * channels + c] = total;
      }
    }
    __syncthreads();  // `folded` is reused by the next task
  }
}

// ---- pass 2: per (image, group), the moments, then each channel's output constants -----------
template <typename P>
__global__ void group_norm_finish_kernel(const float* partial /* [n, n_chunks, 2, channels] */,
                                         const float* pivot /* [n, channels] */, const P* gamma /* [channels] or null */,
                                         const P* beta /* [channels] or null */, int64_t n, int64_t pixels,
                                         int64_t channels, int64_t groups, int64_t n_chunks, float eps,
                                         float* constants /* [n, 4, channels] */) {
  const int64_t per_group = channels / groups;
  for (int64_t task = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; task < n * groups;
       task += int64_t(gridDim.x) * blockDim.x) {
    const int64_t image = task / groups, group = task - image * groups;
    GroupMoments moments;
    for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
      double sum1 = 0.0, sum2 = 0.0;
      for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
        const float* sums = partial + (image * n_chunks + chunk) * 2 * channels;
        sum1 += double(sums[c]);
        sum2 += double(sums[channels + c]);
      }
      moments.add_channel(double(pixels), double(pivot[image * channels + c]), sum1, sum2);
    }
    const double inv_std = group_inv_std(moments.m2, moments.count, eps);
    float* out = constants + image * kConstantRows * channels;
    for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
      const GroupNormChannel k = group_norm_channel(moments.mean, inv_std, gamma, beta, c);
      out[c] = k.mean_hi;
      out[channels + c] = k.mean_lo;
      out[2 * channels + c] = k.scale;
      out[3 * channels + c] = k.beta;
    }
  }
}

// ---- pass 3: y = act(GroupNorm(s)), one thread per V channels of a pixel ---------------
template <typename S, int V, int kAdd>
__global__ void __launch_bounds__(kThreads)
    group_norm_output_kernel(SumLoader<S, V, kAdd> source, const float* constants /* [n, 4, channels] */,
                             S* y /* [n, pixels, channels] */, S* sum_out /* [n, pixels, channels] or null */,
                             int64_t n, int64_t pixels, int64_t channels, bool apply_silu) {
  const int64_t vectors = channels / V, per_image = pixels * vectors;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n * per_image;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t image = idx / per_image;
    const int64_t c0 = (idx - image * per_image) % vectors * V;
    const int64_t at = idx * V;
    float add_c[V], s[V], k[kConstantRows][V], out[V];
    source.load_add_per_channel(image, channels, c0, add_c);
    source.load(at, add_c, s);
#pragma unroll
    for (int row = 0; row < kConstantRows; ++row)
      load_floats<V>(constants + (image * kConstantRows + row) * channels + c0, k[row]);
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = group_norm_output(s[j], k[0][j], k[1][j], k[2][j], k[3][j], apply_silu);
    store_vector<S, V>(y + at, out);
    if (sum_out != nullptr) store_vector<S, V>(sum_out + at, s);
  }
}

unsigned grid_for(int64_t work_items) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((work_items + kThreads - 1) / kThreads, kMaxBlocks)));
}

bool aligned16(const void* p /* any */) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename S, int V, int kAdd>
cudaError_t launch_passes(const S* x /* [n, pixels, channels] */, const S* add /* per kAdd, or null */,
                          int32_t param_dtype, const void* gamma /* [channels] or null */,
                          const void* beta /* [channels] or null */, S* y /* [n, pixels, channels] */,
                          S* sum_out /* [n, pixels, channels] or null */, const Workspace& w, int64_t n, int64_t pixels,
                          int64_t channels, int64_t groups, float eps, bool apply_silu, cudaStream_t stream) {
  const SumLoader<S, V, kAdd> source{x, add};
  const int64_t n_chunks = group_norm_num_chunks(pixels, channels);
  const unsigned stats_grid = unsigned(std::min<int64_t>(n * n_chunks, kMaxBlocks));
  group_norm_stats_kernel<S, V, kAdd><<<stats_grid, kThreads, 0, stream>>>(
      source, n, pixels, channels, n_chunks, group_norm_chunk_pixels(channels), w.partial, w.pivot);
  QMIA_LAUNCH_CHECK();
  QMIA_RETURN_IF_ERROR(dispatch_storage(param_dtype, [&](auto tag) {
    using P = typename decltype(tag)::type;
    group_norm_finish_kernel<P><<<grid_for(n * groups), kThreads, 0, stream>>>(
        w.partial, w.pivot, static_cast<const P*>(gamma), static_cast<const P*>(beta), n, pixels, channels, groups,
        n_chunks, eps, w.constants);
    return cudaGetLastError();
  }));
  group_norm_output_kernel<S, V, kAdd><<<grid_for(n * pixels * (channels / V)), kThreads, 0, stream>>>(
      source, w.constants, y, sum_out, n, pixels, channels, apply_silu);
  QMIA_LAUNCH_CHECK();
  return cudaSuccess;
}

}  // namespace

int64_t group_norm_workspace_elements(int64_t n, int64_t pixels, int64_t channels) {
  check_size(n, "n");
  check_size(pixels, "pixels");
  check_size(channels, "channels");
  check_rows_times_length(n, channels);
  const int64_t n_chunks = group_norm_num_chunks(pixels, channels);
  require(n_chunks < INT64_MAX / 4, "pixels overflow the workspace size");
  check_rows_times_length(n * channels, 2 * n_chunks + 1 + kConstantRows);
  return n * channels * (2 * n_chunks + 1 + kConstantRows);
}

cudaError_t group_norm_act(const void* x /* [n, pixels, channels] */, const void* add /* per add_kind, or null */,
                           int32_t add_kind, const void* gamma /* [channels] or null */,
                           const void* beta /* [channels] or null */, int32_t param_dtype,
                           void* y /* [n, pixels, channels] */, void* sum_out /* [n, pixels, channels] or null */,
                           float* workspace /* [group_norm_workspace_elements] */, int32_t dtype, int64_t n,
                           int64_t pixels, int64_t channels, int64_t groups, float eps, int32_t silu,
                           cudaStream_t stream) {
  check_group_norm(x, add, add_kind, param_dtype, y, dtype, n, pixels, channels, groups, eps, silu);
  if (n == 0 || pixels == 0 || channels == 0) return cudaSuccess;
  check_pointer(workspace, group_norm_workspace_elements(n, pixels, channels), "workspace");
  const Workspace w = split_workspace(workspace, n, channels, group_norm_num_chunks(pixels, channels));
  return dispatch_storage(dtype, [&](auto tag) -> cudaError_t {
    using S = typename decltype(tag)::type;
    constexpr int kVector = int(16 / sizeof(S));
    // Vector accesses need whole vectors per pixel and 16-byte aligned tensors.
    const bool vectorised = channels % kVector == 0 && aligned16(x) && aligned16(y) && aligned16(workspace) &&
                            (add_kind == kAddNone || aligned16(add)) && (sum_out == nullptr || aligned16(sum_out));
    const auto run = [&](auto vector_tag, auto add_tag) {
      constexpr int V = decltype(vector_tag)::value;
      constexpr int kAdd = decltype(add_tag)::value;
      return launch_passes<S, V, kAdd>(static_cast<const S*>(x), static_cast<const S*>(add), param_dtype, gamma,
                                       beta, static_cast<S*>(y), static_cast<S*>(sum_out), w, n, pixels, channels,
                                       groups, eps, silu != 0, stream);
    };
    const auto with_add = [&](auto vector_tag) {
      switch (add_kind) {
        case kAddFull: return run(vector_tag, std::integral_constant<int, kAddFull>{});
        case kAddPerChannel: return run(vector_tag, std::integral_constant<int, kAddPerChannel>{});
        default: return run(vector_tag, std::integral_constant<int, kAddNone>{});
      }
    };
    return vectorised ? with_add(std::integral_constant<int, kVector>{}) : with_add(std::integral_constant<int, 1>{});
  });
}

}  // namespace cuda
}  // namespace qmia
