// Element types of a Tensor, their sizes and names, the 16-bit float storage types, and the
// dispatch helper that turns a runtime DType into a compile-time C++ type for kernels.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/util/error.h"

namespace cohort::core {

enum class DType : uint8_t {
  kFloat32,
  kFloat64,
  kInt64,
  kInt32,
  kUInt8,
  kBool,
  kBFloat16,
  kFloat16
};

// bfloat16: the top half of a float32; conversion rounds to nearest even, NaN stays NaN.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) {  // NOLINT(google-explicit-constructor): a numeric type converts implicitly.
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40);
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  operator float() const { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }
};

// IEEE binary16, round to nearest even, with subnormals, infinities and NaN.
struct Float16 {
  uint16_t bits = 0;
  Float16() = default;
  Float16(float f) { bits = from_float(f); }  // NOLINT(google-explicit-constructor)
  operator float() const { return to_float(bits); }

  static uint16_t from_float(float f) {
    uint32_t x = std::bit_cast<uint32_t>(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
    if (ax < 0x38800000u) {  // subnormal or zero in half precision
      // Adding 0.5f aligns the mantissa so the float adder does the rounding for us.
      float v = std::bit_cast<float>(ax) + 0.5f;
      return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return static_cast<uint16_t>(sign | (ax >> 13));
  }
  static float to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t out;
    if (exp == 0) {
      if (mant == 0) {
        out = sign;
      } else {  // subnormal: scale by 2^-24
        float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
        out = sign | std::bit_cast<uint32_t>(v);
      }
    } else if (exp == 31) {
      out = sign | 0x7f800000u | (mant << 13);
    } else {
      out = sign | ((exp + 112) << 23) | (mant << 13);
    }
    return std::bit_cast<float>(out);
  }
};

constexpr size_t element_size(DType t) {
  switch (t) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat64:
      return 8;
    case DType::kInt64:
      return 8;
    case DType::kInt32:
      return 4;
    case DType::kUInt8:
      return 1;
    case DType::kBool:
      return 1;
    case DType::kBFloat16:
      return 2;
    case DType::kFloat16:
      return 2;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kInt64:
      return "int64";
    case DType::kInt32:
      return "int32";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
  }
  return "?";
}

constexpr bool is_floating(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kBFloat16 ||
         t == DType::kFloat16;
}

// Type promotion for binary ops, following PyTorch's lattice for the types we have.
DType promote_types(DType a, DType b);

template <typename T>
struct TypeTag {
  using type = T;
};

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kFloat32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::kFloat64;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kInt64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kInt32;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::kUInt8;
}
template <>
constexpr DType dtype_of<bool>() {
  return DType::kBool;
}
template <>
constexpr DType dtype_of<BFloat16>() {
  return DType::kBFloat16;
}
template <>
constexpr DType dtype_of<Float16>() {
  return DType::kFloat16;
}

// Calls fn(TypeTag<T>{}) with the C++ type of `t`.
template <typename Fn>
decltype(auto) dispatch_all(DType t, Fn&& fn) {
  switch (t) {
    case DType::kFloat32:
      return fn(TypeTag<float>{});
    case DType::kFloat64:
      return fn(TypeTag<double>{});
    case DType::kInt64:
      return fn(TypeTag<int64_t>{});
    case DType::kInt32:
      return fn(TypeTag<int32_t>{});
    case DType::kUInt8:
      return fn(TypeTag<uint8_t>{});
    case DType::kBool:
      return fn(TypeTag<bool>{});
    case DType::kBFloat16:
      return fn(TypeTag<BFloat16>{});
    case DType::kFloat16:
      return fn(TypeTag<Float16>{});
  }
  COHORT_THROW(InvalidArgument, "unknown dtype ", static_cast<int>(t));
}

// Arithmetic kernels run on these; 16-bit floats are converted to float32 first.
template <typename Fn>
decltype(auto) dispatch_arith(DType t, std::string_view op, Fn&& fn) {
  switch (t) {
    case DType::kFloat32:
      return fn(TypeTag<float>{});
    case DType::kFloat64:
      return fn(TypeTag<double>{});
    case DType::kInt64:
      return fn(TypeTag<int64_t>{});
    case DType::kInt32:
      return fn(TypeTag<int32_t>{});
    case DType::kUInt8:
      return fn(TypeTag<uint8_t>{});
    default:
      break;
  }
  COHORT_THROW(InvalidArgument, op, " does not support dtype ", dtype_name(t),
               "; convert with .to(DType::kFloat32) first");
}

template <typename Fn>
decltype(auto) dispatch_floating(DType t, std::string_view op, Fn&& fn) {
  switch (t) {
    case DType::kFloat32:
      return fn(TypeTag<float>{});
    case DType::kFloat64:
      return fn(TypeTag<double>{});
    default:
      break;
  }
  COHORT_THROW(InvalidArgument, op, " needs a float32 or float64 tensor, got ", dtype_name(t));
}

}  // namespace cohort::core
