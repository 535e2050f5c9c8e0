// Shared basics of the compiled core: the host/device qualifier, dtype codes, row layouts and argument checks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

// Always inlined on the host too: the CPU loops are vectorised only when the formulas
// are inlined into them, including into the AVX2 build of a loop.
#if defined(__CUDACC__)
#define QMIA_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define QMIA_HD inline __attribute__((always_inline))
#else
#define QMIA_HD inline
#endif

namespace qmia {

// Storage dtype codes shared with qmia_fast/kernels.py; arithmetic is always float32
// (float64 only for vote, whose comparisons must be exact in the caller's dtype).
enum DTypeCode : int32_t {
  kFloat32 = 0,
  kBFloat16 = 1,
  kFloat16 = 2,
  kFloat64 = 3,
};

inline const char* dtype_name(int32_t code) {
  switch (code) {
    case kFloat32: return "float32";
    case kBFloat16: return "bfloat16";
    case kFloat16: return "float16";
    case kFloat64: return "float64";
    default: return "unknown";
  }
}

// Where the logical (C-order) element e of a row lives in memory. Rows are always
// dense blocks of row_length elements; inside a row the order is either C order
// or channels_last (memory offset = (h*W + w)*C + c), and the noise and the order
// of every sum follow the logical index so that memory format never changes a result.
struct RowLayout {
  int64_t row_length = 0;    // D = C*H*W for 4-D tensors, prod(shape[1:]) otherwise
  int32_t channels_last = 0; // 0: C order, 1: channels_last (needs channels and plane)
  int64_t channels = 1;      // C
  int64_t plane = 1;         // H*W

  QMIA_HD int64_t memory_offset(int64_t logical) const {
    if (!channels_last) return logical;
    const int64_t c = logical / plane;
    const int64_t p = logical - c * plane;
    return p * channels + c;
  }
};

// Bit moves between float and uint32 that are exact on both back ends. memcpy is C++17's
// bit cast; host compilers and nvcc both reduce it to a register move.
template <typename To, typename From>
QMIA_HD To bit_move(From value) {
  static_assert(sizeof(To) == sizeof(From), "a bit move keeps the size");
  To out;
  std::memcpy(&out, &value, sizeof out);
  return out;
}

QMIA_HD uint32_t float_bits(float value) { return bit_move<uint32_t>(value); }
QMIA_HD float bits_float(uint32_t bits) { return bit_move<float>(bits); }

// ---- argument checks, run by both back ends before touching memory ----------------
// They throw std::invalid_argument, which pybind11 turns into a Python ValueError, so
// a caller that bypasses the Python wrappers still gets an exception, not a crash.

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("qmia_fast core: " + message);
}

inline void check_dtype(int32_t code, bool allow_float64 = false) {
  require(code == kFloat32 || code == kBFloat16 || code == kFloat16 ||
              (allow_float64 && code == kFloat64),
          "unknown dtype code " + std::to_string(code) +
              (allow_float64 ? " (expected 0..3)" : " (expected 0 float32, 1 bfloat16, 2 float16)"));
}

inline void check_size(int64_t value, const char* name) {
  require(value >= 0, std::string(name) + " must be >= 0, got " + std::to_string(value));
}

inline void check_pointer(const void* ptr, int64_t count, const char* name) {
  require(ptr != nullptr || count == 0,
          std::string(name) + " is a null pointer but " + std::to_string(count) + " elements are needed");
}

inline void check_layout(const RowLayout& layout) {
  check_size(layout.row_length, "row_length");
  require(layout.channels_last == 0 || layout.channels_last == 1, "channels_last must be 0 or 1");
  if (layout.channels_last) {
    require(layout.channels > 0 && layout.plane > 0 && layout.channels * layout.plane == layout.row_length,
            "channels_last layout needs channels * plane == row_length with both > 0");
  }
  // Philox element groups are 32-bit words: 4 * 2^32 elements per row at most.
  require(layout.row_length <= (int64_t(1) << 34), "row_length above 2^34 elements is not supported");
}

inline void check_rows_times_length(int64_t n_rows, int64_t row_length) {
  require(row_length == 0 || n_rows <= INT64_MAX / row_length, "n_rows * row_length overflows int64");
}

}  // namespace qmia
