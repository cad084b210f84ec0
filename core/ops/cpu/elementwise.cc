// CPU elementwise kernels: copy with dtype conversion, fill, unary, binary and where.
#include <cmath>
#include <type_traits>

#include "core/ops/cpu/cpu_backend.h"
#include "core/ops/cpu/loops.h"

namespace cohort::core::cpu {

Shape broadcast_byte_strides(const Tensor& t, const Shape& shape) {
  const Shape& sz = t.sizes();
  const Shape& st = t.strides();
  COHORT_CHECK(sz.size() <= shape.size(), "cannot broadcast shape ", shape_str(sz), " to ",
               shape_str(shape));
  Shape out(shape.size(), 0);
  size_t lead = shape.size() - sz.size();
  const int64_t es = static_cast<int64_t>(t.element_size());
  for (size_t i = 0; i < sz.size(); ++i) {
    if (sz[i] == shape[i + lead]) {
      out[i + lead] = st[i] * es;
    } else {
      COHORT_CHECK(sz[i] == 1, "cannot broadcast shape ", shape_str(sz), " to ", shape_str(shape));
    }
  }
  return out;
}

namespace {

template <typename To, typename Ti>
inline To convert(Ti v) {
  if constexpr (std::is_same_v<To, Ti>) {
    return v;
  } else if constexpr (std::is_same_v<To, bool>) {
    return static_cast<float>(v) != 0.0f;
  } else if constexpr (std::is_same_v<To, BFloat16> || std::is_same_v<To, Float16>) {
    return To(static_cast<float>(v));
  } else if constexpr (std::is_same_v<Ti, BFloat16> || std::is_same_v<Ti, Float16>) {
    return static_cast<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluC = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <typename T>
T sigmoid_of(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
void unary_typed(UnaryOp op, const Tensor& in, const Tensor& out, Scalars s) {
  const T a = static_cast<T>(s.a), b = static_cast<T>(s.b);
  switch (op) {
    case UnaryOp::kNeg:
      return unary_loop<T, T>(in, out, [](T x) { return static_cast<T>(-x); });
    case UnaryOp::kAbs:
      return unary_loop<T, T>(in, out, [](T x) { return x < T(0) ? static_cast<T>(-x) : x; });
    case UnaryOp::kSign:
      return unary_loop<T, T>(in, out, [](T x) { return static_cast<T>((T(0) < x) - (x < T(0))); });
    case UnaryOp::kSquare:
      return unary_loop<T, T>(in, out, [](T x) { return static_cast<T>(x * x); });
    case UnaryOp::kRelu:
      return unary_loop<T, T>(in, out, [](T x) { return x > T(0) ? x : T(0); });
    case UnaryOp::kClamp:
      return unary_loop<T, T>(in, out, [a, b](T x) { return x < a ? a : (x > b ? b : x); });
    case UnaryOp::kAffine:
      return unary_loop<T, T>(in, out, [a, b](T x) { return static_cast<T>(x * a + b); });
    default:
      break;
  }
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      case UnaryOp::kExp:
        return unary_loop<T, T>(in, out, [](T x) { return std::exp(x); });
      case UnaryOp::kLog:
        return unary_loop<T, T>(in, out, [](T x) { return std::log(x); });
      case UnaryOp::kSqrt:
        return unary_loop<T, T>(in, out, [](T x) { return std::sqrt(x); });
      case UnaryOp::kRsqrt:
        return unary_loop<T, T>(in, out, [](T x) { return T(1) / std::sqrt(x); });
      case UnaryOp::kReciprocal:
        return unary_loop<T, T>(in, out, [](T x) { return T(1) / x; });
      case UnaryOp::kTanh:
        return unary_loop<T, T>(in, out, [](T x) { return std::tanh(x); });
      case UnaryOp::kSigmoid:
        return unary_loop<T, T>(in, out, [](T x) { return sigmoid_of(x); });
      case UnaryOp::kSilu:
        return unary_loop<T, T>(in, out, [](T x) { return x * sigmoid_of(x); });
      case UnaryOp::kPowScalar:
        return unary_loop<T, T>(in, out, [a](T x) { return std::pow(x, a); });
      case UnaryOp::kGeluTanh:
        return unary_loop<T, T>(in, out, [](T x) {
          return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(kGeluC) * x * x * x)));
        });
      case UnaryOp::kGeluErf:
        return unary_loop<T, T>(
            in, out, [](T x) { return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2))); });
      default:
        break;
    }
  }
  COHORT_THROW(InvalidArgument, "unary op ", static_cast<int>(op), " is not defined for dtype ",
               dtype_name(dtype_of<T>()));
}

template <typename T>
void compare_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (op) {
    case BinaryOp::kEq:
      return binary_loop<bool, T>(a, b, out, [](T x, T y) { return x == y; });
    case BinaryOp::kNe:
      return binary_loop<bool, T>(a, b, out, [](T x, T y) { return x != y; });
    case BinaryOp::kLt:
      return binary_loop<bool, T>(a, b, out, [](T x, T y) { return x < y; });
    case BinaryOp::kLe:
      return binary_loop<bool, T>(a, b, out, [](T x, T y) { return x <= y; });
    case BinaryOp::kGt:
      return binary_loop<bool, T>(a, b, out, [](T x, T y) { return x > y; });
    case BinaryOp::kGe:
      return binary_loop<bool, T>(a, b, out, [](T x, T y) { return x >= y; });
    default:
      break;
  }
}

template <typename T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, Scalars s) {
  switch (op) {
    case BinaryOp::kAdd:
      return binary_loop<T, T>(a, b, out, [](T x, T y) { return static_cast<T>(x + y); });
    case BinaryOp::kSub:
      return binary_loop<T, T>(a, b, out, [](T x, T y) { return static_cast<T>(x - y); });
    case BinaryOp::kMul:
      return binary_loop<T, T>(a, b, out, [](T x, T y) { return static_cast<T>(x * y); });
    case BinaryOp::kDiv:
      if constexpr (std::is_integral_v<T>) {
        COHORT_THROW(InvalidArgument, "integer division is not supported; convert to float first");
      } else {
        return binary_loop<T, T>(a, b, out, [](T x, T y) { return x / y; });
      }
    case BinaryOp::kMaximum:
      return binary_loop<T, T>(a, b, out, [](T x, T y) { return (x > y || x != x) ? x : y; });
    case BinaryOp::kMinimum:
      return binary_loop<T, T>(a, b, out, [](T x, T y) { return (x < y || x != x) ? x : y; });
    case BinaryOp::kEq:
    case BinaryOp::kNe:
    case BinaryOp::kLt:
    case BinaryOp::kLe:
    case BinaryOp::kGt:
    case BinaryOp::kGe:
      return compare_typed<T>(op, a, b, out);
    case BinaryOp::kReluGrad:
      return binary_loop<T, T>(a, b, out, [](T g, T x) { return x > T(0) ? g : T(0); });
    case BinaryOp::kClampGrad: {
      const T lo = static_cast<T>(s.a), hi = static_cast<T>(s.b);
      return binary_loop<T, T>(a, b, out,
                               [lo, hi](T g, T x) { return (x >= lo && x <= hi) ? g : T(0); });
    }
    default:
      break;
  }
  if constexpr (std::is_floating_point_v<T>) {
    const T e = static_cast<T>(s.a);
    switch (op) {
      case BinaryOp::kPow:
        return binary_loop<T, T>(a, b, out, [](T x, T y) { return std::pow(x, y); });
      case BinaryOp::kTanhGrad:
        return binary_loop<T, T>(a, b, out, [](T g, T y) { return g * (T(1) - y * y); });
      case BinaryOp::kSigmoidGrad:
        return binary_loop<T, T>(a, b, out, [](T g, T y) { return g * y * (T(1) - y); });
      case BinaryOp::kSiluGrad:
        return binary_loop<T, T>(a, b, out, [](T g, T x) {
          T sg = sigmoid_of(x);
          return g * sg * (T(1) + x * (T(1) - sg));
        });
      case BinaryOp::kGeluTanhGrad:
        return binary_loop<T, T>(a, b, out, [](T g, T x) {
          T u = T(kSqrt2OverPi) * (x + T(kGeluC) * x * x * x);
          T t = std::tanh(u);
          T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluC) * x * x);
          return g * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
        });
      case BinaryOp::kGeluErfGrad:
        return binary_loop<T, T>(a, b, out, [](T g, T x) {
          T cdf = T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2)));
          T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
          return g * (cdf + x * pdf);
        });
      case BinaryOp::kPowScalarGrad:
        return binary_loop<T, T>(
            a, b, out, [e](T g, T x) { return e == T(0) ? T(0) : g * e * std::pow(x, e - T(1)); });
      default:
        break;
    }
  }
  COHORT_THROW(InvalidArgument, "binary op ", static_cast<int>(op), " is not defined for dtype ",
               dtype_name(dtype_of<T>()));
}

}  // namespace

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  COHORT_CHECK(src.device().is_cpu() && dst.device().is_cpu(), "CPU copy between ",
               src.device().str(), " and ", dst.device().str());
  dispatch_all(dst.dtype(), [&](auto to) {
    using To = typename decltype(to)::type;
    dispatch_all(src.dtype(), [&](auto from) {
      using Ti = typename decltype(from)::type;
      unary_loop<To, Ti>(src, dst, [](Ti v) { return convert<To, Ti>(v); });
    });
  });
}

void CpuBackend::fill(const Tensor& dst, double value) {
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T v = convert<T, double>(value);
    // Writes only: reading dst's old bytes (uninitialised in a new tensor) as T is undefined for
    // bool (UBSan: "load of value 190, not a valid value for type bool").
    const Shape& shape = dst.sizes();
    for_each_strided<1>(shape, {static_cast<char*>(dst.raw_data())},
                        {broadcast_byte_strides(dst, shape)},
                        [&](std::array<char*, 1> p, int64_t n, const std::array<int64_t, 1>& s) {
                          if (s[0] == sizeof(T)) {
                            std::fill_n(reinterpret_cast<T*>(p[0]), n, v);
                          } else {
                            for (int64_t i = 0; i < n; ++i)
                              *reinterpret_cast<T*>(p[0] + i * s[0]) = v;
                          }
                        });
  });
}

void CpuBackend::unary(UnaryOp op, const Tensor& in, const Tensor& out, Scalars s) {
  if (op == UnaryOp::kNot) {
    COHORT_CHECK(in.dtype() == DType::kBool, "logical_not needs a bool tensor");
    return unary_loop<bool, bool>(in, out, [](bool x) { return !x; });
  }
  dispatch_arith(in.dtype(), "unary op", [&](auto tag) {
    using T = typename decltype(tag)::type;
    unary_typed<T>(op, in, out, s);
  });
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                        Scalars s) {
  if (op == BinaryOp::kAnd || op == BinaryOp::kOr) {
    COHORT_CHECK(a.dtype() == DType::kBool && b.dtype() == DType::kBool,
                 "logical and/or need bool tensors");
    if (op == BinaryOp::kAnd)
      return binary_loop<bool, bool>(a, b, out, [](bool x, bool y) { return x && y; });
    return binary_loop<bool, bool>(a, b, out, [](bool x, bool y) { return x || y; });
  }
  if (a.dtype() == DType::kBool && (op == BinaryOp::kEq || op == BinaryOp::kNe)) {
    return compare_typed<bool>(op, a, b, out);
  }
  dispatch_arith(a.dtype(), "binary op", [&](auto tag) {
    using T = typename decltype(tag)::type;
    binary_typed<T>(op, a, b, out, s);
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  COHORT_CHECK(cond.dtype() == DType::kBool, "where: condition must be bool, got ",
               dtype_name(cond.dtype()));
  const Shape& shape = out.sizes();
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_each_strided<4>(shape,
                        {static_cast<char*>(out.raw_data()), static_cast<char*>(cond.raw_data()),
                         static_cast<char*>(a.raw_data()), static_cast<char*>(b.raw_data())},
                        {broadcast_byte_strides(out, shape), broadcast_byte_strides(cond, shape),
                         broadcast_byte_strides(a, shape), broadcast_byte_strides(b, shape)},
                        [&](std::array<char*, 4> p, int64_t n, const std::array<int64_t, 4>& s) {
                          for (int64_t i = 0; i < n; ++i) {
                            bool c = *reinterpret_cast<const bool*>(p[1] + i * s[1]);
                            *reinterpret_cast<T*>(p[0] + i * s[0]) = *reinterpret_cast<const T*>(
                                (c ? p[2] : p[3]) + i * (c ? s[2] : s[3]));
                          }
                        });
  });
}

}  // namespace cohort::core::cpu
