// The bag's majority vote for one sample: member votes, the decision and the mean threshold margin.
#pragma once

#include "common/qmia_common.h"

namespace qmia {

// Model j votes "member" iff score < threshold[j] (a tie is a non-member: the attack
// calls a sample a member only when its score is strictly below the predicted
// quantile). Member iff 2 * votes > n_models. The margin is the mean of
// (threshold[j] - score), accumulated in float64; with no models it is NaN.
struct VoteOutcome {
  int32_t votes;
  bool member;
  float margin;
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
  out.margin = n_models > 0 ? float(margin_sum / double(n_models)) : float(NAN);
  return out;
}

}  // namespace qmia
