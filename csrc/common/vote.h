// The bag's majority vote for one sample: member votes, the decision and the mean threshold margin.
#pragma once

#include "common/qmia_common.h"
#include "common/storage_types.h"

namespace qmia {

// Model j votes "member" iff score < threshold[j] (a tie is a non-member: the attack
// calls a sample a member only when its score is strictly below the predicted
// quantile). Member iff 2 * votes > n_models. The margin is the mean of
// (threshold[j] - score), accumulated and returned in float64 (callers store it in
// float64 for float64 inputs: it is the bag's membership score, and rounding it to
// float32 would merge distinct scores into ties); with no models it is NaN.
struct VoteOutcome {
  int32_t votes;
  bool member;
  double margin;
};

// threshold_at(j): the threshold of model j for this sample, as Compare.
template <typename Compare, typename Loader>
QMIA_HD VoteOutcome vote_one(Compare score, const Loader& threshold_at, int64_t n_models) {
  int64_t votes = 0;
  double margin_sum = 0.0;
  for (int64_t j = 0; j < n_models; ++j) {
    const Compare threshold = threshold_at(j);
    votes += (score < threshold) ? 1 : 0;
    margin_sum += double(threshold) - double(score);
  }
  VoteOutcome out;
  out.votes = int32_t(votes);
  out.member = 2 * votes > n_models;
  out.margin = n_models > 0 ? margin_sum / double(n_models) : double(NAN);
  return out;
}

// Storage S is compared in float64 when it is double, else in float32 (exact for the
// 16-bit types too); the margin is stored as float64 for double, else float32.
template <typename S>
using VoteMargin = typename std::conditional<std::is_same<S, double>::value, double, float>::type;

QMIA_HD double vote_load(const double* p) { return *p; }
template <typename S>
QMIA_HD float vote_load(const S* p) {
  return load_float(p);
}

// Sample i of a vote over strided scores [n_samples] and thresholds [n_models, n_samples].
template <typename S>
QMIA_HD void vote_sample(const S* scores, const S* thresholds, int64_t i, int64_t n_models, int64_t score_stride,
                         int64_t model_stride, int64_t sample_stride, int32_t* votes /* [n_samples] */,
                         uint8_t* decision /* [n_samples] */, VoteMargin<S>* margin /* [n_samples] */) {
  const S* column = thresholds + i * sample_stride;
  const VoteOutcome outcome =
      vote_one(vote_load(scores + i * score_stride), [&](int64_t j) { return vote_load(column + j * model_stride); },
               n_models);
  votes[i] = outcome.votes;
  decision[i] = outcome.member ? 1 : 0;
  margin[i] = VoteMargin<S>(outcome.margin);
}

}  // namespace qmia
