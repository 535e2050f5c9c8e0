// Helpers shared by the two pybind11 modules: integer pointers, row layouts and build descriptions.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/ddim_step.h"
#include "common/group_norm.h"
#include "common/philox.h"
#include "common/qmia_common.h"
#include "common/row_reduce.h"

namespace qmia {
namespace bindings {

namespace py = pybind11;

// Tensors arrive as integers from tensor.data_ptr(); 0 is a null pointer that the
// core rejects whenever elements are needed.
template <typename T>
T* as_pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// A coefficient arrives as (address, value): address 0 means "value for every row".
inline RowCoefficient make_coefficient(uintptr_t address, float value) {
  return RowCoefficient{as_pointer<const float>(address), value};
}

// Sample indices arrive as (address, offset): address 0 means "offset + row", otherwise
// an int64 array with one global sample index per row.
inline SampleIndex make_samples(uintptr_t address, uint64_t offset) {
  return SampleIndex{as_pointer<const int64_t>(address), offset};
}

inline RowLayout make_layout(int64_t row_length, int32_t channels_last, int64_t channels, int64_t plane) {
  RowLayout layout;
  layout.row_length = row_length;
  layout.channels_last = channels_last;
  layout.channels = channels;
  layout.plane = plane;
  check_layout(layout);
  return layout;
}

// Contract constants that kernels/dispatch.py (and kernels/group_norm.py, for GroupNorm) check against their own copy at import.
inline py::dict contract_constants() {
  py::dict constants;
  constants["reduce_chunk"] = kReduceChunk;
  constants["reduce_lanes"] = kReduceLanes;
  constants["dtype_float32"] = int(kFloat32);
  constants["dtype_bfloat16"] = int(kBFloat16);
  constants["dtype_float16"] = int(kFloat16);
  constants["dtype_float64"] = int(kFloat64);
  constants["group_norm_add_none"] = int(kAddNone);
  constants["group_norm_add_full"] = int(kAddFull);
  constants["group_norm_add_per_channel"] = int(kAddPerChannel);
  return constants;
}

}  // namespace bindings
}  // namespace qmia
