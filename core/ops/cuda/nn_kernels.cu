// CUDA kernels for softmax, fused cross-entropy, layer norm and indexing. Row kernels give each
// row one block; the formulas are the CPU kernels' (core/ops/cpu/nn_kernels.cc).
#include <cmath>

#include "core/ops/cuda/common.cuh"
#include "core/ops/cuda/cuda_backend.h"

namespace cohort::core::cuda {
namespace nn_kernels {

struct Max {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return (b > a || b != b) ? b : a;
  }
};
struct Sum {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

// Threads per row block: a warp for short rows, up to 512 for long ones.
inline int row_threads(int64_t cols) {
  int64_t t = (cols + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 512 ? 512 : t));
}

template <typename T>
__device__ __forceinline__ T negative_infinity() {
  return -INFINITY;
}

template <typename T>
__global__ void softmax_rows(int64_t cols, const T* x, T* y, bool log_out) {
  __shared__ T shared[33];
  const T* xr = x + blockIdx.x * cols;
  T* yr = y + blockIdx.x * cols;
  T m = negative_infinity<T>();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = Max()(m, xr[c]);
  m = block_reduce(m, Max(), shared, negative_infinity<T>());
  if (isinf(m) && m < 0) m = 0;  // a fully masked row gives NaN, as on the CPU
  T s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += exp(xr[c] - m);
  s = block_reduce(s, Sum(), shared, T(0));
  if (log_out) {
    const T ls = log(s) + m;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c] - ls;
  } else {
    const T inv = T(1) / s;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = exp(xr[c] - m) * inv;
  }
}

template <typename T>
__global__ void softmax_backward_rows(int64_t cols, const T* g, const T* y, T* gi, bool log_out) {
  __shared__ T shared[33];
  const int64_t base = blockIdx.x * cols;
  T s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    s += log_out ? g[base + c] : g[base + c] * y[base + c];
  s = block_reduce(s, Sum(), shared, T(0));
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const int64_t i = base + c;
    gi[i] = log_out ? g[i] - exp(y[i]) * s : y[i] * (g[i] - s);
  }
}

// One block per row of [matrices, lq, lk] scores; the row's query index is row % lq. Computes in
// float (double for double) whatever the storage type.
template <typename T>
__global__ void attention_softmax_rows(int64_t lq, int64_t lk, bool causal, const T* x, T* y) {
  using A = acc_t<T>;
  __shared__ A shared[33];
  const int64_t r = blockIdx.x;
  const int64_t valid = causal ? ::min(r % lq + 1, lk) : lk;
  const T* xr = x + r * lk;
  T* yr = y + r * lk;
  A m = -INFINITY;
  for (int64_t c = threadIdx.x; c < valid; c += blockDim.x) m = Max()(m, convert<A>(xr[c]));
  m = block_reduce(m, Max(), shared, A(-INFINITY));
  A s = 0;
  for (int64_t c = threadIdx.x; c < valid; c += blockDim.x) s += exp(convert<A>(xr[c]) - m);
  const A inv = A(1) / block_reduce(s, Sum(), shared, A(0));
  for (int64_t c = threadIdx.x; c < lk; c += blockDim.x)
    yr[c] = convert<T>(c < valid ? exp(convert<A>(xr[c]) - m) * inv : A(0));
}

template <typename T>
__global__ void attention_softmax_backward_rows(int64_t lq, int64_t lk, bool causal, acc_t<T> scale,
                                                const T* g, const T* p, T* o) {
  using A = acc_t<T>;
  __shared__ A shared[33];
  const int64_t r = blockIdx.x;
  const int64_t valid = causal ? ::min(r % lq + 1, lk) : lk;
  const int64_t base = r * lk;
  A s = 0;
  for (int64_t c = threadIdx.x; c < valid; c += blockDim.x)
    s += convert<A>(g[base + c]) * convert<A>(p[base + c]);
  s = block_reduce(s, Sum(), shared, A(0));
  for (int64_t c = threadIdx.x; c < lk; c += blockDim.x) {
    const A pv = convert<A>(p[base + c]);
    o[base + c] = convert<T>(c < valid ? scale * pv * (convert<A>(g[base + c]) - s) : A(0));
  }
}

// Rows of at most 32 kPer keys: a warp per row, the row in registers (kPer values per lane, at
// lane + 32 i), read once and written once. The block kernels above read it three times.
template <typename T, int kPer>
__global__ void attention_softmax_warp(int64_t rows, int64_t lq, int64_t lk, bool causal,
                                       const T* x, T* y) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp
  const int lane = threadIdx.x & 31;
  const int64_t valid = causal ? ::min(r % lq + 1, lk) : lk;
  const T* xr = x + r * lk;
  T* yr = y + r * lk;
  A v[kPer];
  A m = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t c = lane + 32 * i;
    v[i] = c < valid ? convert<A>(xr[c]) : A(-INFINITY);
    m = Max()(m, v[i]);
  }
  m = warp_reduce(m, Max());
  A s = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    v[i] = lane + 32 * i < valid ? exp(v[i] - m) : A(0);
    s += v[i];
  }
  const A inv = A(1) / warp_reduce(s, Sum());
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t c = lane + 32 * i;
    if (c < lk) yr[c] = convert<T>(v[i] * inv);
  }
}

template <typename T, int kPer>
__global__ void attention_softmax_backward_warp(int64_t rows, int64_t lq, int64_t lk, bool causal,
                                                acc_t<T> scale, const T* g, const T* p, T* o) {
  using A = acc_t<T>;
  const int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  const int64_t valid = causal ? ::min(r % lq + 1, lk) : lk;
  const int64_t base = r * lk;
  A gv[kPer], pv[kPer];
  A s = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t c = lane + 32 * i;
    const bool in = c < valid;
    gv[i] = in ? convert<A>(g[base + c]) : A(0);
    pv[i] = in ? convert<A>(p[base + c]) : A(0);
    s += gv[i] * pv[i];
  }
  s = warp_reduce(s, Sum());
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t c = lane + 32 * i;
    if (c < lk) o[base + c] = convert<T>(scale * pv[i] * (gv[i] - s));
  }
}

// Calls fn(std::integral_constant<int, kPer>) with the smallest power of two kPer such that
// 32 kPer >= lk; false when lk > 1024 (the block kernels take those rows).
template <typename Fn>
bool with_lane_count(int64_t lk, Fn&& fn) {
  if (lk <= 32) return fn(std::integral_constant<int, 1>{}), true;
  if (lk <= 64) return fn(std::integral_constant<int, 2>{}), true;
  if (lk <= 128) return fn(std::integral_constant<int, 4>{}), true;
  if (lk <= 256) return fn(std::integral_constant<int, 8>{}), true;
  if (lk <= 512) return fn(std::integral_constant<int, 16>{}), true;
  if (lk <= 1024) return fn(std::integral_constant<int, 32>{}), true;
  return false;
}

// Per row: max, sum of exponentials and sum of logits (for label smoothing).
template <typename T>
__device__ void row_stats(const T* xr, int64_t cols, T* shared, T& m, T& s, T& sum_x) {
  m = negative_infinity<T>();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = Max()(m, xr[c]);
  m = block_reduce(m, Max(), shared, negative_infinity<T>());
  s = 0;
  sum_x = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    s += exp(xr[c] - m);
    sum_x += xr[c];
  }
  s = block_reduce(s, Sum(), shared, T(0));
  sum_x = block_reduce(sum_x, Sum(), shared, T(0));
}

template <typename T>
__global__ void cross_entropy_rows(int64_t classes, const T* x, const int64_t* target,
                                   int64_t ignore_index, T eps, T* loss, KernelError* err) {
  __shared__ T shared[33];
  const int64_t r = blockIdx.x;
  const int64_t t = target[r];
  if (t == ignore_index || t < 0 || t >= classes) {
    if (threadIdx.x == 0) {
      loss[r] = 0;
      if (t != ignore_index) record_index_error(err, kCrossEntropyTarget, t, classes);
    }
    return;
  }
  const T* xr = x + r * classes;
  T m, s, sum_x;
  row_stats(xr, classes, shared, m, s, sum_x);
  if (threadIdx.x == 0) {
    const T lse = log(s) + m;
    loss[r] = (T(1) - eps) * (lse - xr[t]) + eps * (lse - sum_x / T(classes));
  }
}

template <typename T>
__global__ void cross_entropy_backward_rows(int64_t classes, const T* x, const int64_t* target,
                                            int64_t ignore_index, T off, T on, const T* scale, T* g,
                                            KernelError* err) {
  __shared__ T shared[33];
  const int64_t r = blockIdx.x;
  const int64_t t = target[r];
  T* gr = g + r * classes;
  if (t == ignore_index || t < 0 || t >= classes) {
    for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) gr[c] = 0;
    if (threadIdx.x == 0 && t != ignore_index)
      record_index_error(err, kCrossEntropyTarget, t, classes);
    return;
  }
  const T* xr = x + r * classes;
  T m, s, sum_x;
  row_stats(xr, classes, shared, m, s, sum_x);
  const T sc = scale[r], k = sc / s;
  for (int64_t c = threadIdx.x; c < classes; c += blockDim.x)
    gr[c] = exp(xr[c] - m) * k - off * sc - (c == t ? (on - off) * sc : T(0));
}

template <typename T>
__global__ void layer_norm_rows(int64_t cols, const T* x, const T* w, const T* b, T eps, T* y,
                                T* mean, T* rstd) {
  __shared__ T shared[33];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * cols;
  T s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
  const T mu = block_reduce(s, Sum(), shared, T(0)) / T(cols);
  T ss = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += (xr[c] - mu) * (xr[c] - mu);
  const T rs = T(1) / sqrt(block_reduce(ss, Sum(), shared, T(0)) / T(cols) + eps);
  if (threadIdx.x == 0) {
    mean[r] = mu;
    rstd[r] = rs;
  }
  T* yr = y + r * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    yr[c] = (xr[c] - mu) * rs * (w ? w[c] : T(1)) + (b ? b[c] : T(0));
}

template <typename T>
__global__ void layer_norm_backward_rows(int64_t cols, const T* g, const T* x, const T* w,
                                         const T* mean, const T* rstd, T* gx) {
  __shared__ T shared[33];
  const int64_t r = blockIdx.x;
  const T* gr = g + r * cols;
  const T* xr = x + r * cols;
  const T mu = mean[r], rs = rstd[r];
  T sum_dy = 0, sum_dy_xhat = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const T dy = gr[c] * (w ? w[c] : T(1));
    sum_dy += dy;
    sum_dy_xhat += dy * (xr[c] - mu) * rs;
  }
  sum_dy = block_reduce(sum_dy, Sum(), shared, T(0));
  sum_dy_xhat = block_reduce(sum_dy_xhat, Sum(), shared, T(0));
  const T inv_n = T(1) / T(cols);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const T xhat = (xr[c] - mu) * rs;
    const T dy = gr[c] * (w ? w[c] : T(1));
    gx[r * cols + c] = rs * (dy - inv_n * sum_dy - xhat * inv_n * sum_dy_xhat);
  }
}

// Weight and bias gradients: column sums over rows, in two passes. Block (c, r) covers 32
// columns of rows [r * chunk, (r + 1) * chunk) with 8 row lanes, so that each warp reads 32
// neighbouring values of a row, and writes one partial sum per column; layer_norm_sum_partials
// adds a column's partials. One pass with a block per 32 columns left most of the GPU idle.
template <typename T>
__global__ void layer_norm_param_partials(int64_t rows, int64_t cols, int64_t chunk, const T* g,
                                          const T* x, const T* mean, const T* rstd, T* pw, T* pb) {
  __shared__ T sw[8][33], sb[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = blockIdx.y * chunk, r1 = ::min(rows, r0 + chunk);
  T aw = 0, ab = 0;
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const T gv = g[r * cols + c];
      aw += gv * (x[r * cols + c] - mean[r]) * rstd[r];
      ab += gv;
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    T tw = 0, tb = 0;
    for (int k = 0; k < 8; ++k) {
      tw += sw[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    pw[blockIdx.y * cols + c] = tw;
    pb[blockIdx.y * cols + c] = tb;
  }
}

template <typename T>
__global__ void layer_norm_sum_partials(int64_t parts, int64_t cols, const T* pw, const T* pb,
                                        T* gw, T* gb) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < cols;
       c += int64_t(gridDim.x) * blockDim.x) {
    T tw = 0, tb = 0;
    for (int64_t k = 0; k < parts; ++k) {
      tw += pw[k * cols + c];
      tb += pb[k * cols + c];
    }
    if (gw) gw[c] = tw;
    if (gb) gb[c] = tb;
  }
}

template <typename T>
__device__ __forceinline__ void atomic_add(T* p, T v) {
  if constexpr (std::is_same_v<T, int64_t>) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
  } else {
    atomicAdd(p, v);
  }
}

// out[o, i, c] = in[o, idx[i], c] over [outer, m, inner] (elements of `bytes` bytes).
template <typename T>
__global__ void index_select_kernel(int64_t outer, int64_t n, int64_t m, int64_t inner, const T* in,
                                    const int64_t* idx, T* out, KernelError* err) {
  const int64_t total = outer * m * inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % inner, i = (e / inner) % m, o = e / (inner * m);
    const int64_t v = idx[i];
    if (v < 0 || v >= n) {
      record_index_error(err, kIndexSelectIndex, v, n);
      out[e] = T();
      continue;
    }
    out[e] = in[(o * n + v) * inner + c];
  }
}

template <typename T>
__global__ void index_add_kernel(int64_t outer, int64_t n, int64_t m, int64_t inner, T* out,
                                 const int64_t* idx, const T* src, KernelError* err) {
  const int64_t total = outer * m * inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % inner, i = (e / inner) % m, o = e / (inner * m);
    const int64_t v = idx[i];
    if (v < 0 || v >= n) {
      record_index_error(err, kIndexAddIndex, v, n);
      continue;
    }
    atomic_add(out + (o * n + v) * inner + c, src[e]);
  }
}

// gather (scatter = false): out[p, i, c] = x[p, idx[p, i, c], c];
// scatter_add (scatter = true): x[p, idx[p, i, c], c] += src[p, i, c].
template <typename T, bool kScatter>
__global__ void gather_scatter_kernel(int64_t outer, int64_t n_idx, int64_t n_x, int64_t inner,
                                      T* x, const int64_t* idx, T* other, KernelError* err) {
  const int64_t total = outer * n_idx * inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % inner, p = e / (inner * n_idx);
    const int64_t v = idx[e];
    if (v < 0 || v >= n_x) {
      record_index_error(err, kScatter ? kScatterAddIndex : kGatherIndex, v, n_x);
      if (!kScatter) other[e] = T();
      continue;
    }
    T* xp = x + (p * n_x + v) * inner + c;
    if constexpr (kScatter) {
      atomic_add(xp, other[e]);
    } else {
      other[e] = *xp;
    }
  }
}

using cpu::Around;
using cpu::around;

int64_t rows_of(const Tensor& t) {
  const int64_t cols = t.dim() ? t.size(-1) : 1;
  return cols ? t.numel() / cols : 0;
}

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}

// Atomic adds exist for these element types; uint8 has none.
template <typename Fn>
void dispatch_atomic(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::kFloat32:
      return fn(TypeTag<float>{});
    case DType::kFloat64:
      return fn(TypeTag<double>{});
    case DType::kInt64:
      return fn(TypeTag<int64_t>{});
    case DType::kInt32:
      return fn(TypeTag<int32_t>{});
    default:
      COHORT_THROW(InvalidArgument, op, " on CUDA does not support dtype ", dtype_name(t));
  }
}

// float, double and the 16-bit floats (as their device types).
template <typename Fn>
void dispatch_attention(DType t, Fn&& fn) {
  switch (t) {
    case DType::kFloat32:
      return fn(TypeTag<float>{});
    case DType::kFloat64:
      return fn(TypeTag<double>{});
    case DType::kBFloat16:
      return fn(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16:
      return fn(TypeTag<__half>{});
    default:
      COHORT_THROW(InvalidArgument, "attention needs a floating-point tensor, got ", dtype_name(t));
  }
}

}  // namespace nn_kernels

using namespace nn_kernels;

void CudaBackend::softmax(const Tensor& in, const Tensor& out, bool log) {
  dispatch_floating(in.dtype(), "softmax", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = rows_of(in), cols = in.dim() ? in.size(-1) : 1;
    if (rows == 0 || cols == 0) return;
    DeviceGuard guard(in.device().index);
    softmax_rows<T><<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(in)>>>(
        cols, static_cast<const T*>(in.raw_data()), static_cast<T*>(out.raw_data()), log);
    COHORT_CUDA_LAUNCHED("softmax");
  });
}

void CudaBackend::softmax_backward(const Tensor& grad, const Tensor& out, const Tensor& grad_in,
                                   bool log) {
  dispatch_floating(out.dtype(), "softmax backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = rows_of(out), cols = out.dim() ? out.size(-1) : 1;
    if (rows == 0 || cols == 0) return;
    DeviceGuard guard(out.device().index);
    softmax_backward_rows<T><<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(out)>>>(
        cols, static_cast<const T*>(grad.raw_data()), static_cast<const T*>(out.raw_data()),
        static_cast<T*>(grad_in.raw_data()), log);
    COHORT_CUDA_LAUNCHED("softmax backward");
  });
}

void CudaBackend::attention_softmax(const Tensor& scores, bool causal, const Tensor& probs) {
  const int64_t lq = scores.size(-2), lk = scores.size(-1);
  const int64_t rows = lk ? scores.numel() / lk : 0;
  if (rows == 0) return;
  DeviceGuard guard(scores.device().index);
  dispatch_attention(scores.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(scores.raw_data());
    T* y = static_cast<T*>(probs.raw_data());
    const bool warp = with_lane_count(lk, [&](auto per) {
      attention_softmax_warp<T, decltype(per)::value>
          <<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream_of(scores)>>>(rows, lq, lk,
                                                                                 causal, x, y);
    });
    if (!warp)
      attention_softmax_rows<T>
          <<<static_cast<unsigned>(rows), row_threads(lk), 0, stream_of(scores)>>>(lq, lk, causal,
                                                                                   x, y);
  });
  COHORT_CUDA_LAUNCHED("attention softmax");
}

void CudaBackend::attention_softmax_backward(const Tensor& grad_probs, const Tensor& probs,
                                             bool causal, double scale, const Tensor& grad_scores) {
  const int64_t lq = probs.size(-2), lk = probs.size(-1);
  const int64_t rows = lk ? probs.numel() / lk : 0;
  if (rows == 0) return;
  DeviceGuard guard(probs.device().index);
  dispatch_attention(probs.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto sc = static_cast<acc_t<T>>(scale);
    const T* g = static_cast<const T*>(grad_probs.raw_data());
    const T* p = static_cast<const T*>(probs.raw_data());
    T* o = static_cast<T*>(grad_scores.raw_data());
    const bool warp = with_lane_count(lk, [&](auto per) {
      attention_softmax_backward_warp<T, decltype(per)::value>
          <<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream_of(probs)>>>(
              rows, lq, lk, causal, sc, g, p, o);
    });
    if (!warp)
      attention_softmax_backward_rows<T>
          <<<static_cast<unsigned>(rows), row_threads(lk), 0, stream_of(probs)>>>(lq, lk, causal,
                                                                                  sc, g, p, o);
  });
  COHORT_CUDA_LAUNCHED("attention softmax backward");
}

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                                double label_smoothing, const Tensor& loss_rows) {
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = logits.size(0), classes = logits.size(1);
    if (rows == 0) return;
    const int device = logits.device().index;
    DeviceGuard guard(device);
    cross_entropy_rows<T>
        <<<static_cast<unsigned>(rows), row_threads(classes), 0, stream_of(logits)>>>(
            classes, static_cast<const T*>(logits.raw_data()), target.data_ptr<int64_t>(),
            ignore_index, static_cast<T>(label_smoothing), static_cast<T*>(loss_rows.raw_data()),
            index_error_slot(device));
    COHORT_CUDA_LAUNCHED("cross_entropy");
  });
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& target,
                                         int64_t ignore_index, double label_smoothing,
                                         const Tensor& row_scale, const Tensor& grad_logits) {
  dispatch_floating(logits.dtype(), "cross_entropy backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = logits.size(0), classes = logits.size(1);
    if (rows == 0) return;
    const T off = static_cast<T>(label_smoothing / static_cast<double>(classes));
    const T on = static_cast<T>(1 - label_smoothing) + off;
    const int device = logits.device().index;
    DeviceGuard guard(device);
    cross_entropy_backward_rows<T>
        <<<static_cast<unsigned>(rows), row_threads(classes), 0, stream_of(logits)>>>(
            classes, static_cast<const T*>(logits.raw_data()), target.data_ptr<int64_t>(),
            ignore_index, off, on, static_cast<const T*>(row_scale.raw_data()),
            static_cast<T*>(grad_logits.raw_data()), index_error_slot(device));
    COHORT_CUDA_LAUNCHED("cross_entropy backward");
  });
}

void CudaBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                             const Tensor& out, const Tensor& mean, const Tensor& rstd) {
  dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = mean.numel(), cols = rows ? x.numel() / rows : 0;
    if (rows == 0 || cols == 0) return;
    DeviceGuard guard(x.device().index);
    layer_norm_rows<T><<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(x)>>>(
        cols, static_cast<const T*>(x.raw_data()), ptr_or_null<T>(weight), ptr_or_null<T>(bias),
        static_cast<T>(eps), static_cast<T*>(out.raw_data()), static_cast<T*>(mean.raw_data()),
        static_cast<T*>(rstd.raw_data()));
    COHORT_CUDA_LAUNCHED("layer_norm");
  });
}

void CudaBackend::layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                      const Tensor& mean, const Tensor& rstd, const Tensor& grad_x,
                                      const Tensor& grad_w, const Tensor& grad_b) {
  dispatch_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = mean.numel(), cols = rows ? x.numel() / rows : 0;
    DeviceGuard guard(x.device().index);
    const T* g = static_cast<const T*>(grad.raw_data());
    const T* xp = static_cast<const T*>(x.raw_data());
    const T* mp = static_cast<const T*>(mean.raw_data());
    const T* rp = static_cast<const T*>(rstd.raw_data());
    if (grad_x.defined() && rows > 0 && cols > 0) {
      layer_norm_backward_rows<T>
          <<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(x)>>>(
              cols, g, xp, ptr_or_null<T>(weight), mp, rp, static_cast<T*>(grad_x.raw_data()));
      COHORT_CUDA_LAUNCHED("layer_norm backward");
    }
    if ((grad_w.defined() || grad_b.defined()) && cols > 0) {
      // About 128 rows per block, at most 256 parts per column.
      const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(256, rows / 128));
      const int64_t chunk = (rows + parts - 1) / parts;
      Tensor partial = empty({2, parts, cols}, x.options());
      T* pw = static_cast<T*>(partial.raw_data());
      T* pb = pw + parts * cols;
      const dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(parts));
      layer_norm_param_partials<T>
          <<<grid, dim3(32, 8), 0, stream_of(x)>>>(rows, cols, chunk, g, xp, mp, rp, pw, pb);
      COHORT_CUDA_LAUNCHED("layer_norm parameter gradients");
      layer_norm_sum_partials<T><<<blocks_for(cols), kThreads, 0, stream_of(x)>>>(
          parts, cols, pw, pb, grad_w.defined() ? static_cast<T*>(grad_w.raw_data()) : nullptr,
          grad_b.defined() ? static_cast<T*>(grad_b.raw_data()) : nullptr);
      COHORT_CUDA_LAUNCHED("layer_norm parameter gradients");
    }
  });
}

void CudaBackend::index_select(const Tensor& in, int64_t dim, const Tensor& index,
                               const Tensor& out) {
  const Around a = around(in, dim);
  const int64_t m = index.numel(), total = a.outer * m * a.inner;
  if (total == 0) return;
  const int device = in.device().index;
  DeviceGuard guard(device);
  dispatch_all(in.dtype(), [&](auto tag) {
    using T = dev_t<typename decltype(tag)::type>;
    index_select_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(in)>>>(
        a.outer, a.n, m, a.inner, static_cast<const T*>(in.raw_data()), index.data_ptr<int64_t>(),
        static_cast<T*>(out.raw_data()), index_error_slot(device));
  });
  COHORT_CUDA_LAUNCHED("index_select");
}

void CudaBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index,
                            const Tensor& src) {
  const Around a = around(out, dim);
  const int64_t m = index.numel(), total = a.outer * m * a.inner;
  if (total == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  dispatch_atomic(out.dtype(), "index_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    index_add_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(out)>>>(
        a.outer, a.n, m, a.inner, static_cast<T*>(out.raw_data()), index.data_ptr<int64_t>(),
        static_cast<const T*>(src.raw_data()), index_error_slot(device));
  });
  COHORT_CUDA_LAUNCHED("index_add");
}

void CudaBackend::gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) {
  const Around ai = around(in, dim), ax = around(index, dim);
  COHORT_CHECK(ai.outer == ax.outer && ai.inner == ax.inner,
               "gather: index shape must match the input outside dimension ", dim);
  const int64_t total = ax.outer * ax.n * ax.inner;
  if (total == 0) return;
  const int device = in.device().index;
  DeviceGuard guard(device);
  dispatch_all(in.dtype(), [&](auto tag) {
    using T = dev_t<typename decltype(tag)::type>;
    gather_scatter_kernel<T, false><<<blocks_for(total), kThreads, 0, stream_of(in)>>>(
        ax.outer, ax.n, ai.n, ax.inner, static_cast<T*>(in.raw_data()), index.data_ptr<int64_t>(),
        static_cast<T*>(out.raw_data()), index_error_slot(device));
  });
  COHORT_CUDA_LAUNCHED("gather");
}

void CudaBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                              const Tensor& src) {
  const Around ao = around(out, dim), ax = around(index, dim);
  COHORT_CHECK(ao.outer == ax.outer && ao.inner == ax.inner,
               "scatter_add: index shape must match the output outside dimension ", dim);
  const int64_t total = ax.outer * ax.n * ax.inner;
  if (total == 0) return;
  const int device = out.device().index;
  DeviceGuard guard(device);
  dispatch_atomic(out.dtype(), "scatter_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    gather_scatter_kernel<T, true><<<blocks_for(total), kThreads, 0, stream_of(out)>>>(
        ax.outer, ax.n, ao.n, ax.inner, static_cast<T*>(out.raw_data()), index.data_ptr<int64_t>(),
        static_cast<T*>(src.raw_data()), index_error_slot(device));
  });
  COHORT_CUDA_LAUNCHED("scatter_add");
}

}  // namespace cohort::core::cuda
