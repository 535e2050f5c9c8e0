// Per-sample sums with a fixed summation order: the same bits for any batch size, thread count or device.
#pragma once

#include "common/qmia_common.h"

namespace qmia {

// The order of every row sum (CPU and CUDA implement exactly this):
//  1. the row's logical elements are cut into chunks of kReduceChunk = 4096;
//  2. inside a chunk, lane m (0 <= m < 1024) adds the terms of elements
//     chunk_start + m + 1024 k for k = 0..3 in that order, starting from 0.0f
//     (elements past the row's end add nothing);
//  3. the 1024 lanes are folded by a pairwise tree: lane[m] += lane[m + s] for
//     s = 512, 256, ..., 1; lane[0] is the chunk's sum;
//  4. the chunk sums are added in chunk order in float64, starting from 0.0, and the
//     total is rounded to float32.
// Lanes map to CUDA threads as 4 consecutive lanes per thread, which lets a thread
// take 4 Philox normals at once and load 4 elements with one vector load.
constexpr int64_t kReduceChunk = 4096;
constexpr int kReduceLanes = 1024;
constexpr int kReduceSteps = int(kReduceChunk / kReduceLanes);

QMIA_HD int64_t reduce_num_chunks(int64_t row_length) { return (row_length + kReduceChunk - 1) / kReduceChunk; }

// Step 3 on the host; the CUDA kernels do the same folds in shared memory.
inline float fold_lanes(float* lanes /* [kReduceLanes] */) {
  for (int stride = kReduceLanes / 2; stride >= 1; stride /= 2) {
#pragma omp simd
    for (int m = 0; m < stride; ++m) lanes[m] += lanes[m + stride];
  }
  return lanes[0];
}

// Step 4, for one row.
QMIA_HD float combine_chunk_sums(const float* chunk_sums /* [n_chunks] */, int64_t n_chunks) {
  double total = 0.0;
  for (int64_t c = 0; c < n_chunks; ++c) total += double(chunk_sums[c]);
  return float(total);
}

// |a - b|^p with exact multiply-only paths for the usual powers, so that those are
// bit-equal across back ends; other p go through powf, which is not.
enum PowerCode : int32_t { kPowerGeneral = 0, kPowerOne = 1, kPowerTwo = 2, kPowerThree = 3, kPowerFour = 4 };

inline int32_t power_code(float p) {
  if (p == 1.0f) return kPowerOne;
  if (p == 2.0f) return kPowerTwo;
  if (p == 3.0f) return kPowerThree;
  if (p == 4.0f) return kPowerFour;
  return kPowerGeneral;
}

QMIA_HD float pnorm_term(float a, float b, int32_t code, float p) {
  const float diff = fabsf(a - b);
  switch (code) {
    case kPowerOne: return diff;
    case kPowerTwo: return diff * diff;
    case kPowerThree: return (diff * diff) * diff;
    case kPowerFour: {
      const float sq = diff * diff;
      return sq * sq;
    }
    default: return powf(diff, p);
  }
}

QMIA_HD float squared_difference(float a, float b) {
  const float diff = a - b;
  return diff * diff;
}

}  // namespace qmia
