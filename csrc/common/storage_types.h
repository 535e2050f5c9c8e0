// 16-bit storage types (bfloat16, float16) and exact float32 conversions, identical bits on CPU and CUDA.
#pragma once

#include "common/qmia_common.h"

namespace qmia {

// Plain 16-bit words rather than cuda_fp16/bfloat16 types: the host compiler has no
// portable half type, and doing the rounding by hand keeps CPU and GPU bit-equal.
struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

QMIA_HD float bf16_to_float(bf16_t h) { return bits_float(uint32_t(h.bits) << 16); }

// Round to nearest even, NaN kept quiet (never rounded into infinity).
QMIA_HD bf16_t float_to_bf16(float value) {
  const uint32_t bits = float_bits(value);
  const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet = (bits >> 16) | 0x40u;
  return bf16_t{uint16_t(is_nan ? quiet : rounded)};
}

QMIA_HD float f16_to_float(f16_t h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1Fu;
  const uint32_t mantissa = h.bits & 0x3FFu;
  // Subnormal halves are mantissa * 2^-24, exact in float32.
  const float subnormal = float(int32_t(mantissa)) * 0x1p-24f;
  const uint32_t normal_bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  const uint32_t special_bits = sign | 0x7F800000u | (mantissa << 13);
  const uint32_t subnormal_bits = sign | float_bits(subnormal);
  const uint32_t out = exponent == 0x1Fu ? special_bits : (exponent == 0 ? subnormal_bits : normal_bits);
  return bits_float(out);
}

// Round to nearest even, as torch's .half() does, including subnormals and overflow to inf.
QMIA_HD f16_t float_to_f16(float value) {
  const uint32_t bits = float_bits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  uint32_t out;
  if (magnitude > 0x7F800000u) {
    out = 0x7E00u | ((magnitude >> 13) & 0x3FFu);  // NaN, quieted
  } else if (magnitude >= 0x477FF000u) {
    out = 0x7C00u;  // 65520 and up round to infinity
  } else if (magnitude >= 0x38800000u) {
    // Normal half: rebias the exponent by (127 - 15) << 23, then round the 13 dropped bits.
    out = (magnitude - 0x38000000u + 0x0FFFu + ((magnitude >> 13) & 1u)) >> 13;
  } else if (magnitude < 0x33000000u) {
    out = 0;  // below 2^-25: rounds to zero (2^-25 itself is a tie that goes to even 0)
  } else {
    // Subnormal half in units of 2^-24: shift the 24-bit significand right by 126 - exponent.
    const uint32_t exponent = magnitude >> 23;
    const uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - exponent;
    uint32_t q = significand >> shift;
    const uint32_t remainder = significand & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    q += (remainder > halfway || (remainder == halfway && (q & 1u))) ? 1u : 0u;
    out = q;
  }
  return f16_t{uint16_t(sign | out)};
}

// Uniform load/store of a storage element as float32 arithmetic.
QMIA_HD float load_float(const float* p) { return *p; }
QMIA_HD float load_float(const bf16_t* p) { return bf16_to_float(*p); }
QMIA_HD float load_float(const f16_t* p) { return f16_to_float(*p); }
QMIA_HD void store_float(float* p, float v) { *p = v; }
QMIA_HD void store_float(bf16_t* p, float v) { *p = float_to_bf16(v); }
QMIA_HD void store_float(f16_t* p, float v) { *p = float_to_f16(v); }

// The same conversions on raw 16-bit words, for packed vector loads and stores.
template <typename S>
QMIA_HD float load_float_bits(uint16_t bits);
template <>
QMIA_HD float load_float_bits<bf16_t>(uint16_t bits) { return bf16_to_float(bf16_t{bits}); }
template <>
QMIA_HD float load_float_bits<f16_t>(uint16_t bits) { return f16_to_float(f16_t{bits}); }

template <typename S>
QMIA_HD uint32_t store_float_bits(float value);
template <>
QMIA_HD uint32_t store_float_bits<bf16_t>(float value) { return float_to_bf16(value).bits; }
template <>
QMIA_HD uint32_t store_float_bits<f16_t>(float value) { return float_to_f16(value).bits; }

// Calls fn(TypeTag<S>{}) with the storage type S that dtype names (double for kFloat64
// where kAllowFloat64) and returns its result; an unknown code throws.
template <typename T>
struct TypeTag {
  using type = T;
};

template <bool kAllowFloat64 = false, typename Fn>
auto dispatch_storage(int32_t dtype, const Fn& fn) -> decltype(fn(TypeTag<float>{})) {
  switch (dtype) {
    case kFloat32: return fn(TypeTag<float>{});
    case kBFloat16: return fn(TypeTag<bf16_t>{});
    case kFloat16: return fn(TypeTag<f16_t>{});
    default:
      if constexpr (kAllowFloat64) {
        if (dtype == kFloat64) return fn(TypeTag<double>{});
      }
  }
  throw std::invalid_argument("qmia_fast core: unknown dtype code " + std::to_string(dtype));
}

}  // namespace qmia
