#include "collectives/cpu/reduce_kernels.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "core/util/error.h"

namespace cohort::collectives::cpu {
namespace {

using core::DType;

// `src` may start at any byte of a shared-memory ring, so its elements are loaded by memcpy:
// the same unaligned vector loads once compiled, without the undefined behaviour of a misaligned
// T* (UBSan).
template <typename T, typename F>
void apply(void* dst, const void* src, size_t n, F f) {
  T* __restrict d = static_cast<T*>(dst);
  const unsigned char* __restrict s = static_cast<const unsigned char*>(src);
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, s + i * sizeof(T), sizeof(T));
    d[i] = f(d[i], v);
  }
}

template <typename T>
void reduce_typed(ReduceOp op, void* dst, const void* src, size_t n) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return apply<T>(dst, src, n, [](T a, T b) { return static_cast<T>(a + b); });
    case ReduceOp::kProduct:
      return apply<T>(dst, src, n, [](T a, T b) { return static_cast<T>(a * b); });
    case ReduceOp::kMin:
      return apply<T>(dst, src, n, [](T a, T b) { return b < a ? b : a; });
    case ReduceOp::kMax:
      return apply<T>(dst, src, n, [](T a, T b) { return b > a ? b : a; });
  }
}

// Half types: widen a block to float32, reduce, narrow (one rounding per reduction, as NCCL does).
template <typename H>
void reduce_half(ReduceOp op, void* dst, const void* src, size_t n) {
  H* d = static_cast<H*>(dst);
  const unsigned char* s = static_cast<const unsigned char*>(src);  // any alignment, as above
  constexpr size_t kBlock = 256;
  float a[kBlock], b[kBlock];
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t m = std::min(kBlock, n - i);
    for (size_t j = 0; j < m; ++j) {
      H h;
      std::memcpy(&h, s + (i + j) * sizeof(H), sizeof(H));
      a[j] = static_cast<float>(d[i + j]);
      b[j] = static_cast<float>(h);
    }
    reduce_typed<float>(op, a, b, m);
    for (size_t j = 0; j < m; ++j) d[i + j] = H(a[j]);
  }
}

}  // namespace

void check_reducible(DType dtype, ReduceOp op, const char* what) {
  switch (dtype) {
    case DType::kFloat32:
    case DType::kFloat64:
    case DType::kBFloat16:
    case DType::kFloat16:
      return;
    case DType::kInt32:
    case DType::kInt64:
    case DType::kUInt8:
      if (op == ReduceOp::kAvg)
        COHORT_THROW(InvalidArgument, what, ": ReduceOp avg needs a floating tensor, got ",
                     core::dtype_name(dtype), "; use sum and divide yourself");
      return;
    case DType::kBool:
      COHORT_THROW(InvalidArgument, what, " does not reduce bool tensors");
  }
}

void reduce_into(DType dtype, ReduceOp op, void* dst, const void* src, size_t n) {
  switch (dtype) {
    case DType::kFloat32:
      return reduce_typed<float>(op, dst, src, n);
    case DType::kFloat64:
      return reduce_typed<double>(op, dst, src, n);
    case DType::kInt32:
      return reduce_typed<int32_t>(op, dst, src, n);
    case DType::kInt64:
      return reduce_typed<int64_t>(op, dst, src, n);
    case DType::kUInt8:
      return reduce_typed<uint8_t>(op, dst, src, n);
    case DType::kBFloat16:
      return reduce_half<core::BFloat16>(op, dst, src, n);
    case DType::kFloat16:
      return reduce_half<core::Float16>(op, dst, src, n);
    case DType::kBool:
      break;
  }
  COHORT_THROW(InvalidArgument, "cannot reduce ", core::dtype_name(dtype), " tensors");
}

void divide(DType dtype, void* dst, size_t n, int divisor) {
  auto go = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    for (size_t i = 0; i < n; ++i) p[i] = T(static_cast<float>(p[i]) / static_cast<float>(divisor));
  };
  switch (dtype) {
    case DType::kFloat32: {
      float* p = static_cast<float*>(dst);
      const float inv = 1.0f / static_cast<float>(divisor);
      // Multiply by the reciprocal only where it is exact, so avg matches sum / n bit for bit.
      if ((divisor & (divisor - 1)) == 0) {
        for (size_t i = 0; i < n; ++i) p[i] *= inv;
      } else {
        for (size_t i = 0; i < n; ++i) p[i] /= static_cast<float>(divisor);
      }
      return;
    }
    case DType::kFloat64: {
      double* p = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) p[i] /= divisor;
      return;
    }
    case DType::kBFloat16:
      return go(static_cast<core::BFloat16*>(dst));
    case DType::kFloat16:
      return go(static_cast<core::Float16*>(dst));
    default:
      COHORT_THROW(InvalidArgument, "avg needs a floating tensor, got ", core::dtype_name(dtype));
  }
}

}  // namespace cohort::collectives::cpu
