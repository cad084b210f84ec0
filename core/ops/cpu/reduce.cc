// CPU reductions. Sums accumulate in double (float types) or int64 (integer types) into a buffer of
// the output's shape, then convert; max/min along one dim also return the first extreme's index.
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/ops/cpu/cpu_backend.h"
#include "core/ops/cpu/loops.h"

namespace cohort::core::cpu {
namespace {

template <typename T>
using AccOf = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

template <typename T>
void reduce_general(ReduceOp op, const Tensor& in, const Tensor& out) {
  using Acc = AccOf<T>;
  const Shape& shape = in.sizes();
  Tensor acc = empty(out.sizes(), TensorOptions(dtype_of<Acc>()));
  Acc* a = acc.data_ptr<Acc>();
  const int64_t n_out = acc.numel();
  const Acc init = reduce_identity<T, Acc>(op);
  for (int64_t i = 0; i < n_out; ++i) a[i] = init;
  for_each_strided<2>(
      shape, {static_cast<char*>(acc.raw_data()), static_cast<char*>(in.raw_data())},
      {broadcast_byte_strides(acc, shape), broadcast_byte_strides(in, shape)},
      [&](std::array<char*, 2> p, int64_t n, const std::array<int64_t, 2>& s) {
        Acc* o = reinterpret_cast<Acc*>(p[0]);
        const T* x = reinterpret_cast<const T*>(p[1]);
        auto at = [&](int64_t i) -> Acc& { return *reinterpret_cast<Acc*>(p[0] + i * s[0]); };
        auto xi = [&](int64_t i) {
          return static_cast<Acc>(*reinterpret_cast<const T*>(p[1] + i * s[1]));
        };
        switch (op) {
          case ReduceOp::kSum:
            if (s[0] == 0 && s[1] == sizeof(T)) {
              // Eight independent partial sums: one running sum is a chain of dependent adds
              // (latency-bound, unvectorisable), and bias gradients sum long contiguous rows.
              Acc lane[8] = {};
              int64_t i = 0;
              for (; i + 8 <= n; i += 8)
                for (int j = 0; j < 8; ++j) lane[j] += static_cast<Acc>(x[i + j]);
              Acc t = ((lane[0] + lane[4]) + (lane[1] + lane[5])) +
                      ((lane[2] + lane[6]) + (lane[3] + lane[7]));
              for (; i < n; ++i) t += static_cast<Acc>(x[i]);
              *o += t;
            } else if (s[0] == sizeof(Acc) && s[1] == sizeof(T)) {
              for (int64_t i = 0; i < n; ++i) o[i] += static_cast<Acc>(x[i]);
            } else {
              for (int64_t i = 0; i < n; ++i) at(i) += xi(i);
            }
            break;
          case ReduceOp::kProd:
            for (int64_t i = 0; i < n; ++i) at(i) *= xi(i);
            break;
          case ReduceOp::kMax:
            for (int64_t i = 0; i < n; ++i) {
              Acc v = xi(i);
              if (v > at(i) || v != v) at(i) = v;
            }
            break;
          case ReduceOp::kMin:
            for (int64_t i = 0; i < n; ++i) {
              Acc v = xi(i);
              if (v < at(i) || v != v) at(i) = v;
            }
            break;
        }
      });
  T* o = static_cast<T*>(out.raw_data());
  COHORT_CHECK(out.is_contiguous(), "reduce output must be contiguous");
  for (int64_t i = 0; i < n_out; ++i) o[i] = static_cast<T>(a[i]);
}

template <typename T>
void reduce_dim_with_index(ReduceOp op, const Tensor& in, const Tensor& out, const Tensor& indices,
                           int64_t dim) {
  COHORT_CHECK(in.is_contiguous() && out.is_contiguous(),
               "indexed reduce needs contiguous tensors");
  int64_t outer = 1, inner = 1, n = in.size(dim);
  for (int64_t i = 0; i < dim; ++i) outer *= in.size(i);
  for (int64_t i = dim + 1; i < in.dim(); ++i) inner *= in.size(i);
  COHORT_CHECK(n > 0, "max/min/argmax over an empty dimension");
  const T* x = static_cast<const T*>(in.raw_data());
  T* o = static_cast<T*>(out.raw_data());
  int64_t* idx = static_cast<int64_t*>(indices.raw_data());
  const bool is_max = op == ReduceOp::kMax;
  for (int64_t a = 0; a < outer; ++a) {
    for (int64_t c = 0; c < inner; ++c) {
      const T* base = x + a * n * inner + c;
      T best = base[0];
      int64_t bi = 0;
      for (int64_t j = 1; j < n; ++j) {
        T v = base[j * inner];
        if (best != best) break;  // NaN wins and stays
        if (v != v || (is_max ? v > best : v < best)) {
          best = v;
          bi = j;
        }
      }
      o[a * inner + c] = best;
      idx[a * inner + c] = bi;
    }
  }
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const Tensor& in, const Tensor& out, const Tensor& indices,
                        int64_t dim) {
  dispatch_arith(in.dtype(), "reduction", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (indices.defined()) {
      reduce_dim_with_index<T>(op, in, out, indices, dim);
    } else {
      reduce_general<T>(op, in, out);
    }
  });
}

}  // namespace cohort::core::cpu
