// Strided loops for CPU kernels. Operands are broadcast to an output shape by giving them byte
// strides (0 on broadcast dims); dims are coalesced so that contiguous tensors become one flat
// loop, and the innermost loop gets the strides so kernels can take a vectorisable contiguous fast
// path.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor/tensor.h"

namespace cohort::core::cpu {

// Byte strides of `t` broadcast to `shape` (right-aligned, 0 where t has size 1 or lacks the dim).
Shape broadcast_byte_strides(const Tensor& t, const Shape& shape);

// Sizes of a contiguous tensor around `dim`: [outer, n, inner] (the index kernels' view).
struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};
inline Around around(const Tensor& t, int64_t dim) {
  Around a;
  for (int64_t i = 0; i < dim; ++i) a.outer *= t.size(i);
  a.n = t.dim() ? t.size(dim) : 1;
  for (int64_t i = dim + 1; i < t.dim(); ++i) a.inner *= t.size(i);
  return a;
}

template <size_t N>
struct LoopDims {
  std::vector<int64_t> sizes;                   // outermost first
  std::vector<std::array<int64_t, N>> strides;  // bytes, per dim per operand
};

template <size_t N>
LoopDims<N> coalesce(const Shape& shape, const std::array<Shape, N>& strides) {
  LoopDims<N> d;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    std::array<int64_t, N> s;
    for (size_t k = 0; k < N; ++k) s[k] = strides[k][i];
    if (!d.sizes.empty()) {
      bool merge = true;
      for (size_t k = 0; k < N; ++k) merge = merge && d.strides.back()[k] == s[k] * shape[i];
      if (merge) {
        d.sizes.back() *= shape[i];
        d.strides.back() = s;
        continue;
      }
    }
    d.sizes.push_back(shape[i]);
    d.strides.push_back(s);
  }
  return d;
}

// Calls inner(ptrs, n, inner_strides) for every innermost row of `shape`.
template <size_t N, typename Inner>
void for_each_strided(const Shape& shape, std::array<char*, N> base,
                      const std::array<Shape, N>& strides, Inner&& inner) {
  for (int64_t s : shape)
    if (s == 0) return;
  LoopDims<N> d = coalesce<N>(shape, strides);
  if (d.sizes.empty()) {
    std::array<int64_t, N> zero{};
    inner(base, 1, zero);
    return;
  }
  const size_t nd = d.sizes.size();
  const int64_t n = d.sizes[nd - 1];
  const std::array<int64_t, N> in_strides = d.strides[nd - 1];
  if (nd == 1) {
    inner(base, n, in_strides);
    return;
  }
  std::vector<int64_t> counter(nd - 1, 0);
  std::array<char*, N> ptr = base;
  while (true) {
    inner(ptr, n, in_strides);
    // Advance the outer counter, innermost outer dim first.
    size_t dim = nd - 1;
    while (dim-- > 0) {
      for (size_t k = 0; k < N; ++k) ptr[k] += d.strides[dim][k];
      if (++counter[dim] < d.sizes[dim]) break;
      for (size_t k = 0; k < N; ++k) ptr[k] -= d.strides[dim][k] * d.sizes[dim];
      counter[dim] = 0;
      if (dim == 0) return;
    }
  }
}

template <typename To, typename Ti, typename F>
void unary_loop(const Tensor& in, const Tensor& out, F f) {
  const Shape& shape = out.sizes();
  for_each_strided<2>(shape,
                      {static_cast<char*>(out.raw_data()), static_cast<char*>(in.raw_data())},
                      {broadcast_byte_strides(out, shape), broadcast_byte_strides(in, shape)},
                      [&](std::array<char*, 2> p, int64_t n, const std::array<int64_t, 2>& s) {
                        To* o = reinterpret_cast<To*>(p[0]);
                        const Ti* x = reinterpret_cast<const Ti*>(p[1]);
                        if (s[0] == sizeof(To) && s[1] == sizeof(Ti)) {
                          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
                        } else if (s[0] == sizeof(To) && s[1] == 0) {
                          const To v = f(*x);
                          for (int64_t i = 0; i < n; ++i) o[i] = v;
                        } else {
                          for (int64_t i = 0; i < n; ++i)
                            *reinterpret_cast<To*>(p[0] + i * s[0]) =
                                f(*reinterpret_cast<const Ti*>(p[1] + i * s[1]));
                        }
                      });
}

template <typename To, typename Ti, typename F>
void binary_loop(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const Shape& shape = out.sizes();
  for_each_strided<3>(shape,
                      {static_cast<char*>(out.raw_data()), static_cast<char*>(a.raw_data()),
                       static_cast<char*>(b.raw_data())},
                      {broadcast_byte_strides(out, shape), broadcast_byte_strides(a, shape),
                       broadcast_byte_strides(b, shape)},
                      [&](std::array<char*, 3> p, int64_t n, const std::array<int64_t, 3>& s) {
                        To* o = reinterpret_cast<To*>(p[0]);
                        const Ti* x = reinterpret_cast<const Ti*>(p[1]);
                        const Ti* y = reinterpret_cast<const Ti*>(p[2]);
                        constexpr int64_t so = sizeof(To), si = sizeof(Ti);
                        if (s[0] == so && s[1] == si && s[2] == si) {
                          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
                        } else if (s[0] == so && s[1] == si && s[2] == 0) {
                          const Ti yv = *y;
                          for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], yv);
                        } else if (s[0] == so && s[1] == 0 && s[2] == si) {
                          const Ti xv = *x;
                          for (int64_t i = 0; i < n; ++i) o[i] = f(xv, y[i]);
                        } else {
                          for (int64_t i = 0; i < n; ++i)
                            *reinterpret_cast<To*>(p[0] + i * s[0]) =
                                f(*reinterpret_cast<const Ti*>(p[1] + i * s[1]),
                                  *reinterpret_cast<const Ti*>(p[2] + i * s[2]));
                        }
                      });
}

}  // namespace cohort::core::cpu
