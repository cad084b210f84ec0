// CUDA elementwise kernels: copy with dtype conversion (and between devices), fill, unary,
// binary and where. Each op has a dense path (one flat index, every operand contiguous) and a
// strided path (offsets from the coalesced shape); the functors are the CPU kernels' formulas.
#include <cmath>
#include <cstring>

#include "core/autograd/grad_mode.h"
#include "core/ops/cuda/common.cuh"
#include "core/ops/cuda/cuda_backend.h"

namespace cohort::core::cuda {
namespace kernels {

template <typename To, typename Ti, typename F>
__global__ void map1_flat(int64_t n, To* __restrict__ out, const Ti* __restrict__ in, F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = f(in[i]);
}

template <typename To, typename Ti, typename F>
__global__ void map1_strided(int64_t n, Offsets<2> o, char* out, const char* in, F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[2];
    o.at(i, off);
    *reinterpret_cast<To*>(out + off[0]) = f(*reinterpret_cast<const Ti*>(in + off[1]));
  }
}

template <typename To, typename Ti, typename F>
__global__ void map2_flat(int64_t n, To* __restrict__ out, const Ti* a, const Ti* b, F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = f(a[i], b[i]);
}

template <typename To, typename Ti, typename F>
__global__ void map2_strided(int64_t n, Offsets<3> o, char* out, const char* a, const char* b,
                             F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[3];
    o.at(i, off);
    *reinterpret_cast<To*>(out + off[0]) =
        f(*reinterpret_cast<const Ti*>(a + off[1]), *reinterpret_cast<const Ti*>(b + off[2]));
  }
}

template <typename T>
__global__ void where_strided(int64_t n, Offsets<4> o, char* out, const char* cond, const char* a,
                              const char* b) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[4];
    o.at(i, off);
    const bool c = *reinterpret_cast<const bool*>(cond + off[1]);
    *reinterpret_cast<T*>(out + off[0]) = *reinterpret_cast<const T*>(c ? a + off[2] : b + off[3]);
  }
}

__global__ void adamw_kernel(int64_t n, float* __restrict__ p, const float* __restrict__ g,
                             float* __restrict__ m, float* __restrict__ v, float decay, float b1,
                             float b2, float step, float sqrt_bc2, float eps) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = m[i] + (1.0f - b1) * (gi - m[i]);
    const float vi = v[i] * b2 + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step * mi / (sqrtf(vi) / sqrt_bc2 + eps);
  }
}

}  // namespace kernels

namespace elementwise {

template <typename To, typename Ti>
struct ConvertF {
  __device__ To operator()(Ti v) const { return convert<To, Ti>(v); }
};

template <typename T>
struct FillF {
  T v;
  __device__ T operator()(T) const { return v; }
};

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kGeluC = 0.044715;
constexpr double kInvSqrt2 = 0.7071067811865476;
constexpr double kInvSqrt2Pi = 0.3989422804014327;

template <typename T>
__device__ __forceinline__ T sigmoid_of(T x) {
  return T(1) / (T(1) + exp(-x));
}

template <typename T, UnaryOp OP>
struct UnaryF {
  T a, b;
  __device__ T operator()(T x) const {
    if constexpr (OP == UnaryOp::kNeg) return static_cast<T>(-x);
    if constexpr (std::is_unsigned_v<T>) {
      if constexpr (OP == UnaryOp::kAbs) return x;
      if constexpr (OP == UnaryOp::kSign) return static_cast<T>(T(0) < x);
    } else {
      if constexpr (OP == UnaryOp::kAbs) return x < T(0) ? static_cast<T>(-x) : x;
      if constexpr (OP == UnaryOp::kSign) return static_cast<T>((T(0) < x) - (x < T(0)));
    }
    if constexpr (OP == UnaryOp::kSquare) return static_cast<T>(x * x);
    if constexpr (OP == UnaryOp::kRelu) return x > T(0) ? x : T(0);
    if constexpr (OP == UnaryOp::kClamp) return x < a ? a : (x > b ? b : x);
    if constexpr (OP == UnaryOp::kAffine) return static_cast<T>(x * a + b);
    if constexpr (std::is_floating_point_v<T>) {
      if constexpr (OP == UnaryOp::kExp) return exp(x);
      if constexpr (OP == UnaryOp::kLog) return log(x);
      if constexpr (OP == UnaryOp::kSqrt) return sqrt(x);
      if constexpr (OP == UnaryOp::kRsqrt) return T(1) / sqrt(x);
      if constexpr (OP == UnaryOp::kReciprocal) return T(1) / x;
      if constexpr (OP == UnaryOp::kTanh) return tanh(x);
      if constexpr (OP == UnaryOp::kSigmoid) return sigmoid_of(x);
      if constexpr (OP == UnaryOp::kSilu) return x * sigmoid_of(x);
      if constexpr (OP == UnaryOp::kPowScalar) return pow(x, a);
      if constexpr (OP == UnaryOp::kGeluTanh)
        return T(0.5) * x * (T(1) + tanh(T(kSqrt2OverPi) * (x + T(kGeluC) * x * x * x)));
      if constexpr (OP == UnaryOp::kGeluErf) return T(0.5) * x * (T(1) + erf(x * T(kInvSqrt2)));
    }
    return x;
  }
};

template <typename T, BinaryOp OP>
struct BinaryF {
  T a, b;
  __device__ T operator()(T x, T y) const {
    if constexpr (OP == BinaryOp::kAdd) return static_cast<T>(x + y);
    if constexpr (OP == BinaryOp::kSub) return static_cast<T>(x - y);
    if constexpr (OP == BinaryOp::kMul) return static_cast<T>(x * y);
    if constexpr (OP == BinaryOp::kMaximum) return (x > y || x != x) ? x : y;
    if constexpr (OP == BinaryOp::kMinimum) return (x < y || x != x) ? x : y;
    if constexpr (OP == BinaryOp::kReluGrad) return y > T(0) ? x : T(0);
    if constexpr (OP == BinaryOp::kClampGrad) return (y >= a && y <= b) ? x : T(0);
    if constexpr (std::is_floating_point_v<T>) {
      if constexpr (OP == BinaryOp::kDiv) return x / y;
      if constexpr (OP == BinaryOp::kPow) return pow(x, y);
      if constexpr (OP == BinaryOp::kTanhGrad) return x * (T(1) - y * y);
      if constexpr (OP == BinaryOp::kSigmoidGrad) return x * y * (T(1) - y);
      if constexpr (OP == BinaryOp::kSiluGrad) {
        const T sg = sigmoid_of(y);
        return x * sg * (T(1) + y * (T(1) - sg));
      }
      if constexpr (OP == BinaryOp::kGeluTanhGrad) {
        const T u = T(kSqrt2OverPi) * (y + T(kGeluC) * y * y * y);
        const T t = tanh(u);
        const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluC) * y * y);
        return x * (T(0.5) * (T(1) + t) + T(0.5) * y * (T(1) - t * t) * du);
      }
      if constexpr (OP == BinaryOp::kGeluErfGrad) {
        const T cdf = T(0.5) * (T(1) + erf(y * T(kInvSqrt2)));
        const T pdf = T(kInvSqrt2Pi) * exp(T(-0.5) * y * y);
        return x * (cdf + y * pdf);
      }
      if constexpr (OP == BinaryOp::kPowScalarGrad)
        return a == T(0) ? T(0) : x * a * pow(y, a - T(1));
    }
    return x;
  }
};

template <typename T, BinaryOp OP>
struct CompareF {
  __device__ bool operator()(T x, T y) const {
    if constexpr (OP == BinaryOp::kEq) return x == y;
    if constexpr (OP == BinaryOp::kNe) return x != y;
    if constexpr (OP == BinaryOp::kLt) return x < y;
    if constexpr (OP == BinaryOp::kLe) return x <= y;
    if constexpr (OP == BinaryOp::kGt) return x > y;
    if constexpr (OP == BinaryOp::kGe) return x >= y;
    if constexpr (OP == BinaryOp::kAnd) return x && y;
    if constexpr (OP == BinaryOp::kOr) return x || y;
    return false;
  }
};

// Storage type S computed in C (float for the 16-bit floats, S itself otherwise).
template <typename S, typename C, typename F>
struct Via1 {
  F f;
  __device__ S operator()(S x) const { return convert<S>(f(convert<C>(x))); }
};
template <typename S, typename C, typename F>
struct Via2 {
  F f;
  __device__ S operator()(S x, S y) const { return convert<S>(f(convert<C>(x), convert<C>(y))); }
};
template <typename S, typename C, typename F>
struct ViaCompare {
  F f;
  __device__ bool operator()(S x, S y) const { return f(convert<C>(x), convert<C>(y)); }
};

// Calls fn(TypeTag<S>{}, TypeTag<C>{}): the device storage type and the type arithmetic runs in.
template <typename Fn>
void dispatch_compute(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::kFloat32:
      return fn(TypeTag<float>{}, TypeTag<float>{});
    case DType::kFloat64:
      return fn(TypeTag<double>{}, TypeTag<double>{});
    case DType::kInt64:
      return fn(TypeTag<int64_t>{}, TypeTag<int64_t>{});
    case DType::kInt32:
      return fn(TypeTag<int32_t>{}, TypeTag<int32_t>{});
    case DType::kUInt8:
      return fn(TypeTag<uint8_t>{}, TypeTag<uint8_t>{});
    case DType::kBFloat16:
      return fn(TypeTag<__nv_bfloat16>{}, TypeTag<float>{});
    case DType::kFloat16:
      return fn(TypeTag<__half>{}, TypeTag<float>{});
    default:
      COHORT_THROW(InvalidArgument, op, " does not support dtype ", dtype_name(t));
  }
}

struct NotF {
  __device__ bool operator()(bool x) const { return !x; }
};

// out = f(in), in broadcast to out's shape; To and Ti are device types.
template <typename To, typename Ti, typename F>
void unary_map(const Tensor& in, const Tensor& out, F f) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const Shape& shape = out.sizes();
  bool flat = false;
  Offsets<2> o = make_offsets<2>(
      shape, {cpu::broadcast_byte_strides(out, shape), cpu::broadcast_byte_strides(in, shape)},
      {sizeof(To), sizeof(Ti)}, &flat);
  DeviceGuard guard(out.device().index);
  if (flat) {
    kernels::map1_flat<To, Ti><<<blocks_for(n), kThreads, 0, stream_of(out)>>>(
        n, static_cast<To*>(out.raw_data()), static_cast<const Ti*>(in.raw_data()), f);
  } else {
    kernels::map1_strided<To, Ti><<<blocks_for(n), kThreads, 0, stream_of(out)>>>(
        n, o, static_cast<char*>(out.raw_data()), static_cast<const char*>(in.raw_data()), f);
  }
  COHORT_CUDA_LAUNCHED("elementwise kernel");
}

template <typename To, typename Ti, typename F>
void binary_map(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const Shape& shape = out.sizes();
  bool flat = false;
  Offsets<3> o = make_offsets<3>(
      shape,
      {cpu::broadcast_byte_strides(out, shape), cpu::broadcast_byte_strides(a, shape),
       cpu::broadcast_byte_strides(b, shape)},
      {sizeof(To), sizeof(Ti), sizeof(Ti)}, &flat);
  DeviceGuard guard(out.device().index);
  if (flat) {
    kernels::map2_flat<To, Ti><<<blocks_for(n), kThreads, 0, stream_of(out)>>>(
        n, static_cast<To*>(out.raw_data()), static_cast<const Ti*>(a.raw_data()),
        static_cast<const Ti*>(b.raw_data()), f);
  } else {
    kernels::map2_strided<To, Ti><<<blocks_for(n), kThreads, 0, stream_of(out)>>>(
        n, o, static_cast<char*>(out.raw_data()), static_cast<const char*>(a.raw_data()),
        static_cast<const char*>(b.raw_data()), f);
  }
  COHORT_CUDA_LAUNCHED("elementwise kernel");
}

#define COHORT_UNARY_CASE(OP) \
  case UnaryOp::OP:           \
    return unary_map<S, S>(in, out, Via1<S, T, UnaryF<T, UnaryOp::OP>>{{a, b}});

template <typename S, typename T>
void unary_typed(UnaryOp op, const Tensor& in, const Tensor& out, Scalars s) {
  const T a = static_cast<T>(s.a), b = static_cast<T>(s.b);
  switch (op) {
    COHORT_UNARY_CASE(kNeg)
    COHORT_UNARY_CASE(kAbs)
    COHORT_UNARY_CASE(kSign)
    COHORT_UNARY_CASE(kSquare)
    COHORT_UNARY_CASE(kRelu)
    COHORT_UNARY_CASE(kClamp)
    COHORT_UNARY_CASE(kAffine)
    default:
      break;
  }
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      COHORT_UNARY_CASE(kExp)
      COHORT_UNARY_CASE(kLog)
      COHORT_UNARY_CASE(kSqrt)
      COHORT_UNARY_CASE(kRsqrt)
      COHORT_UNARY_CASE(kReciprocal)
      COHORT_UNARY_CASE(kTanh)
      COHORT_UNARY_CASE(kSigmoid)
      COHORT_UNARY_CASE(kSilu)
      COHORT_UNARY_CASE(kPowScalar)
      COHORT_UNARY_CASE(kGeluTanh)
      COHORT_UNARY_CASE(kGeluErf)
      default:
        break;
    }
  }
  COHORT_THROW(InvalidArgument, "unary op ", static_cast<int>(op), " is not defined for dtype ",
               dtype_name(in.dtype()));
}
#undef COHORT_UNARY_CASE

#define COHORT_BINARY_CASE(OP) \
  case BinaryOp::OP:           \
    return binary_map<S, S>(a, b, out, Via2<S, T, BinaryF<T, BinaryOp::OP>>{{sa, sb}});
#define COHORT_COMPARE_CASE(OP) \
  case BinaryOp::OP:            \
    return binary_map<bool, S>(a, b, out, ViaCompare<S, T, CompareF<T, BinaryOp::OP>>{});

template <typename S, typename T>
void compare_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  switch (op) {
    COHORT_COMPARE_CASE(kEq)
    COHORT_COMPARE_CASE(kNe)
    COHORT_COMPARE_CASE(kLt)
    COHORT_COMPARE_CASE(kLe)
    COHORT_COMPARE_CASE(kGt)
    COHORT_COMPARE_CASE(kGe)
    default:
      break;
  }
}

template <typename S, typename T>
void binary_typed(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, Scalars s) {
  const T sa = static_cast<T>(s.a), sb = static_cast<T>(s.b);
  switch (op) {
    COHORT_BINARY_CASE(kAdd)
    COHORT_BINARY_CASE(kSub)
    COHORT_BINARY_CASE(kMul)
    COHORT_BINARY_CASE(kMaximum)
    COHORT_BINARY_CASE(kMinimum)
    COHORT_BINARY_CASE(kReluGrad)
    COHORT_BINARY_CASE(kClampGrad)
    case BinaryOp::kEq:
    case BinaryOp::kNe:
    case BinaryOp::kLt:
    case BinaryOp::kLe:
    case BinaryOp::kGt:
    case BinaryOp::kGe:
      return compare_typed<S, T>(op, a, b, out);
    case BinaryOp::kDiv:
      if constexpr (std::is_integral_v<T>)
        COHORT_THROW(InvalidArgument, "integer division is not supported; convert to float first");
      break;
    default:
      break;
  }
  if constexpr (std::is_floating_point_v<T>) {
    switch (op) {
      COHORT_BINARY_CASE(kDiv)
      COHORT_BINARY_CASE(kPow)
      COHORT_BINARY_CASE(kTanhGrad)
      COHORT_BINARY_CASE(kSigmoidGrad)
      COHORT_BINARY_CASE(kSiluGrad)
      COHORT_BINARY_CASE(kGeluTanhGrad)
      COHORT_BINARY_CASE(kGeluErfGrad)
      COHORT_BINARY_CASE(kPowScalarGrad)
      default:
        break;
    }
  }
  COHORT_THROW(InvalidArgument, "binary op ", static_cast<int>(op), " is not defined for dtype ",
               dtype_name(a.dtype()));
}
#undef COHORT_BINARY_CASE
#undef COHORT_COMPARE_CASE

struct Copy16F {
  __device__ uint4 operator()(uint4 v) const { return v; }
};

// A same-dtype copy whose innermost dim is dense on both sides moves 16 bytes per thread instead
// of one element: the strided copies that reshape attention heads (8 bfloat16 per load) were
// bound by per-element index arithmetic. False where the layout does not allow it.
bool copy_16_bytes(const Tensor& src, const Tensor& dst) {
  const auto es = static_cast<int64_t>(dst.element_size());
  if (16 % es != 0 || reinterpret_cast<uintptr_t>(dst.raw_data()) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(src.raw_data()) % 16 != 0)
    return false;
  const int64_t per = 16 / es;
  const Shape& shape = dst.sizes();
  cpu::LoopDims<2> d = cpu::coalesce<2>(
      shape, {cpu::broadcast_byte_strides(dst, shape), cpu::broadcast_byte_strides(src, shape)});
  if (d.sizes.empty()) return false;
  const size_t last = d.sizes.size() - 1;
  if (d.strides[last][0] != es || d.strides[last][1] != es || d.sizes[last] % per != 0)
    return false;
  Shape sizes(d.sizes.begin(), d.sizes.end()), to(sizes.size()), from(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    to[i] = d.strides[i][0];
    from[i] = d.strides[i][1];
    if (i < last && (to[i] % 16 != 0 || from[i] % 16 != 0)) return false;
  }
  sizes[last] /= per;
  to[last] = from[last] = 16;
  int64_t n = 1;
  for (int64_t v : sizes) n *= v;
  bool flat = false;
  Offsets<2> o = make_offsets<2>(sizes, {to, from}, {16, 16}, &flat);
  DeviceGuard guard(dst.device().index);
  if (flat) {
    kernels::map1_flat<uint4, uint4><<<blocks_for(n), kThreads, 0, stream_of(dst)>>>(
        n, static_cast<uint4*>(dst.raw_data()), static_cast<const uint4*>(src.raw_data()),
        Copy16F{});
  } else {
    kernels::map1_strided<uint4, uint4><<<blocks_for(n), kThreads, 0, stream_of(dst)>>>(
        n, o, static_cast<char*>(dst.raw_data()), static_cast<const char*>(src.raw_data()),
        Copy16F{});
  }
  COHORT_CUDA_LAUNCHED("copy");
  return true;
}

}  // namespace elementwise

using namespace elementwise;

bool CudaBackend::adamw_step(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                             const AdamWStep& a) {
  for (const Tensor* t : {&p, &g, &m, &v})
    if (t->dtype() != DType::kFloat32 || !t->is_contiguous() || t->device() != p.device())
      return false;
  if (g.numel() != p.numel() || m.numel() != p.numel() || v.numel() != p.numel()) return false;
  const int64_t n = p.numel();
  if (n == 0) return true;
  DeviceGuard guard(p.device().index);
  kernels::adamw_kernel<<<blocks_for(n), kThreads, 0, stream_of(p)>>>(
      n, p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(),
      static_cast<float>(1 - a.lr * a.weight_decay), static_cast<float>(a.beta1),
      static_cast<float>(a.beta2), static_cast<float>(a.lr / a.bc1),
      static_cast<float>(std::sqrt(a.bc2)), static_cast<float>(a.eps));
  COHORT_CUDA_LAUNCHED("adamw");
  return true;
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  if (src.device() != dst.device()) {
    // Across devices the bytes move as they are (contiguous, src's dtype); conversion and
    // broadcasting then happen on the destination's side.
    autograd::NoGradGuard no_grad;
    Tensor moved = src.to(dst.device());
    backend_for(dst.device()).copy(moved, dst);
    return;
  }
  if (dst.numel() == 0) return;
  if (src.dtype() == dst.dtype() && copy_16_bytes(src, dst)) return;
  dispatch_all(dst.dtype(), [&](auto to) {
    using To = dev_t<typename decltype(to)::type>;
    dispatch_all(src.dtype(), [&](auto from) {
      using Ti = dev_t<typename decltype(from)::type>;
      unary_map<To, Ti>(src, dst, ConvertF<To, Ti>{});
    });
  });
}

void CudaBackend::fill(const Tensor& dst, double value) {
  dispatch_all(dst.dtype(), [&](auto tag) {
    using T = dev_t<typename decltype(tag)::type>;
    // double -> T on the host with the CPU's rule (through float for 16-bit and bool).
    T v;
    if constexpr (std::is_same_v<T, bool>) {
      v = static_cast<float>(value) != 0.0f;
    } else if constexpr (is_half_v<T>) {
      using Host = typename decltype(tag)::type;
      const Host h(static_cast<float>(value));
      static_assert(sizeof(Host) == sizeof(T));
      std::memcpy(static_cast<void*>(&v), &h, sizeof v);
    } else {
      v = static_cast<T>(value);
    }
    unary_map<T, T>(dst, dst, FillF<T>{v});
  });
}

void CudaBackend::unary(UnaryOp op, const Tensor& in, const Tensor& out, Scalars s) {
  if (op == UnaryOp::kNot) {
    COHORT_CHECK(in.dtype() == DType::kBool, "logical_not needs a bool tensor");
    return unary_map<bool, bool>(in, out, NotF{});
  }
  dispatch_compute(in.dtype(), "unary op", [&](auto storage, auto compute) {
    unary_typed<typename decltype(storage)::type, typename decltype(compute)::type>(op, in, out, s);
  });
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                         Scalars s) {
  if (op == BinaryOp::kAnd || op == BinaryOp::kOr) {
    COHORT_CHECK(a.dtype() == DType::kBool && b.dtype() == DType::kBool,
                 "logical and/or need bool tensors");
    if (op == BinaryOp::kAnd)
      return binary_map<bool, bool>(a, b, out, CompareF<bool, BinaryOp::kAnd>{});
    return binary_map<bool, bool>(a, b, out, CompareF<bool, BinaryOp::kOr>{});
  }
  if (a.dtype() == DType::kBool && (op == BinaryOp::kEq || op == BinaryOp::kNe)) {
    return compare_typed<bool, bool>(op, a, b, out);
  }
  dispatch_compute(a.dtype(), "binary op", [&](auto storage, auto compute) {
    binary_typed<typename decltype(storage)::type, typename decltype(compute)::type>(op, a, b, out,
                                                                                     s);
  });
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  COHORT_CHECK(cond.dtype() == DType::kBool, "where: condition must be bool, got ",
               dtype_name(cond.dtype()));
  const int64_t n = out.numel();
  if (n == 0) return;
  const Shape& shape = out.sizes();
  dispatch_all(out.dtype(), [&](auto tag) {
    using T = dev_t<typename decltype(tag)::type>;
    Offsets<4> o = make_offsets<4>(
        shape,
        {cpu::broadcast_byte_strides(out, shape), cpu::broadcast_byte_strides(cond, shape),
         cpu::broadcast_byte_strides(a, shape), cpu::broadcast_byte_strides(b, shape)},
        {sizeof(T), 1, sizeof(T), sizeof(T)}, nullptr);
    DeviceGuard guard(out.device().index);
    kernels::where_strided<T><<<blocks_for(n), kThreads, 0, stream_of(out)>>>(
        n, o, static_cast<char*>(out.raw_data()), static_cast<const char*>(cond.raw_data()),
        static_cast<const char*>(a.raw_data()), static_cast<const char*>(b.raw_data()));
    COHORT_CUDA_LAUNCHED("where");
  });
}

}  // namespace cohort::core::cuda
