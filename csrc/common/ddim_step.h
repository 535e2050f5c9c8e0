// The affine update shared by the DDIM step (x_n = c1 x + c2 eps) and noise injection (x_t = a x0 + b eps).
#pragma once

#include "common/qmia_common.h"

namespace qmia {

// A per-sample coefficient: one value per row, or one value for every row (per_row
// null), which spares callers with a schedule-wide scalar an allocation and a fill.
struct RowCoefficient {
  const float* per_row;  // [n_rows], or null
  float value;           // used when per_row is null
  QMIA_HD float at(int64_t row) const { return per_row != nullptr ? per_row[row] : value; }
};

inline void check_coefficient(const RowCoefficient& coefficient, const char* name) {
  require(coefficient.per_row != nullptr || std::isfinite(coefficient.value),
          std::string(name) + " is a non-finite scalar coefficient");
}

// Both products are rounded before the add on every back end (no FMA), which is what
// makes the CPU and CUDA results bit-equal.
QMIA_HD float affine_combine(float coef_x, float x, float coef_eps, float eps) {
  const float scaled_x = coef_x * x;
  const float scaled_eps = coef_eps * eps;
  return scaled_x + scaled_eps;
}

// Squared distance of the DDIM step's result from a reference, without storing the step.
QMIA_HD float ddim_step_sqerr_term(float c1, float x, float c2, float eps, float ref) {
  const float diff = affine_combine(c1, x, c2, eps) - ref;
  return diff * diff;
}

}  // namespace qmia
