// CPU kernels for softmax, fused cross-entropy, layer norm and indexing.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/ops/cpu/cpu_backend.h"
#include "core/ops/cpu/fast_exp.h"
#include "core/ops/cpu/loops.h"

namespace cohort::core::cpu {
namespace {

void check_index(int64_t v, int64_t n, const char* op) {
  COHORT_CHECK(v >= 0 && v < n, op, ": index ", v, " is out of range for a dimension of size ", n);
}

}  // namespace

void CpuBackend::softmax(const Tensor& in, const Tensor& out, bool log) {
  dispatch_floating(in.dtype(), "softmax", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cols = in.size(-1), rows = in.numel() / std::max<int64_t>(cols, 1);
    const T* x = static_cast<const T*>(in.raw_data());
    T* y = static_cast<T*>(out.raw_data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      T* yr = y + r * cols;
      T m = row_max(xr, cols);
      if (std::isinf(m) && m < 0) m = 0;  // a fully masked row gives NaN like PyTorch below
      // Exponentials first (a loop that vectorises), then their sum (in order, as before).
      for (int64_t c = 0; c < cols; ++c) yr[c] = exp_of(xr[c] - m);
      const T s = row_sum(yr, cols);
      if (log) {
        T ls = std::log(s) + m;
        for (int64_t c = 0; c < cols; ++c) yr[c] = xr[c] - ls;
      } else {
        T inv = T(1) / s;
        for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
      }
    }
  });
}

void CpuBackend::softmax_backward(const Tensor& grad, const Tensor& out, const Tensor& grad_in,
                                  bool log) {
  dispatch_floating(out.dtype(), "softmax backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cols = out.size(-1), rows = out.numel() / std::max<int64_t>(cols, 1);
    const T* g = static_cast<const T*>(grad.raw_data());
    const T* y = static_cast<const T*>(out.raw_data());
    T* gi = static_cast<T*>(grad_in.raw_data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * cols;
      const T* yr = y + r * cols;
      T* o = gi + r * cols;
      T s = 0;
      if (log) {
        for (int64_t c = 0; c < cols; ++c) s += gr[c];
        for (int64_t c = 0; c < cols; ++c) o[c] = gr[c] - exp_of(yr[c]) * s;
      } else {
        for (int64_t c = 0; c < cols; ++c) s += gr[c] * yr[c];
        for (int64_t c = 0; c < cols; ++c) o[c] = yr[c] * (gr[c] - s);
      }
    }
  });
}

void CpuBackend::attention_softmax(const Tensor& scores, bool causal, const Tensor& probs) {
  dispatch_floating(scores.dtype(), "attention", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t lq = scores.size(-2), lk = scores.size(-1), rows = scores.numel() / lk;
    const T* x = static_cast<const T*>(scores.raw_data());
    T* y = static_cast<T*>(probs.raw_data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * lk;
      T* yr = y + r * lk;
      const int64_t valid = causal ? std::min(r % lq + 1, lk) : lk;
      const T m = row_max(xr, valid);
      for (int64_t c = 0; c < valid; ++c) yr[c] = exp_of(xr[c] - m);
      const T inv = T(1) / row_sum(yr, valid);
      for (int64_t c = 0; c < valid; ++c) yr[c] *= inv;
      for (int64_t c = valid; c < lk; ++c) yr[c] = 0;
    }
  });
}

void CpuBackend::attention_softmax_backward(const Tensor& grad_probs, const Tensor& probs,
                                            bool causal, double scale, const Tensor& grad_scores) {
  dispatch_floating(probs.dtype(), "attention backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t lq = probs.size(-2), lk = probs.size(-1), rows = probs.numel() / lk;
    const T* g = static_cast<const T*>(grad_probs.raw_data());
    const T* p = static_cast<const T*>(probs.raw_data());
    T* o = static_cast<T*>(grad_scores.raw_data());
    const T sc = static_cast<T>(scale);
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * lk;
      const T* pr = p + r * lk;
      T* orow = o + r * lk;
      const int64_t valid = causal ? std::min(r % lq + 1, lk) : lk;
      T s = 0;
      for (int64_t c = 0; c < valid; ++c) s += gr[c] * pr[c];
      for (int64_t c = 0; c < valid; ++c) orow[c] = sc * pr[c] * (gr[c] - s);
      for (int64_t c = valid; c < lk; ++c) orow[c] = 0;
    }
  });
}

void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                               double label_smoothing, const Tensor& loss_rows) {
  dispatch_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = logits.size(0), classes = logits.size(1);
    const T* x = static_cast<const T*>(logits.raw_data());
    const int64_t* t = target.data_ptr<int64_t>();
    T* loss = static_cast<T*>(loss_rows.raw_data());
    const double eps = label_smoothing;
    for (int64_t r = 0; r < rows; ++r) {
      if (t[r] == ignore_index) {
        loss[r] = 0;
        continue;
      }
      check_index(t[r], classes, "cross_entropy target");
      const T* xr = x + r * classes;
      const T m = row_max(xr, classes);
      thread_local std::vector<T> e;
      e.resize(static_cast<size_t>(classes));
      for (int64_t c = 0; c < classes; ++c) e[c] = exp_of(xr[c] - m);
      const double s = row_sum(e.data(), classes), sum_x = row_sum(xr, classes);
      double lse = std::log(s) + m;
      double nll = lse - xr[t[r]];
      double smooth = lse - sum_x / static_cast<double>(classes);
      loss[r] = static_cast<T>((1 - eps) * nll + eps * smooth);
    }
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& target,
                                        int64_t ignore_index, double label_smoothing,
                                        const Tensor& row_scale, const Tensor& grad_logits) {
  dispatch_floating(logits.dtype(), "cross_entropy backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = logits.size(0), classes = logits.size(1);
    const T* x = static_cast<const T*>(logits.raw_data());
    const int64_t* t = target.data_ptr<int64_t>();
    const T* scale = static_cast<const T*>(row_scale.raw_data());
    T* g = static_cast<T*>(grad_logits.raw_data());
    const T off = static_cast<T>(label_smoothing / static_cast<double>(classes));
    const T on = static_cast<T>(1 - label_smoothing) + off;
    for (int64_t r = 0; r < rows; ++r) {
      T* gr = g + r * classes;
      if (t[r] == ignore_index) {
        for (int64_t c = 0; c < classes; ++c) gr[c] = 0;
        continue;
      }
      const T* xr = x + r * classes;
      const T m = row_max(xr, classes);
      for (int64_t c = 0; c < classes; ++c) gr[c] = exp_of(xr[c] - m);
      const T s = row_sum(gr, classes);
      const T k = scale[r] / s, sc = scale[r];
      for (int64_t c = 0; c < classes; ++c) gr[c] = gr[c] * k - off * sc;
      gr[t[r]] -= (on - off) * sc;
    }
  });
}

void CpuBackend::layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                            const Tensor& out, const Tensor& mean, const Tensor& rstd) {
  dispatch_floating(x.dtype(), "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cols = mean.numel() ? x.numel() / mean.numel() : 0, rows = mean.numel();
    const T* xp = static_cast<const T*>(x.raw_data());
    const T* w = weight.defined() ? static_cast<const T*>(weight.raw_data()) : nullptr;
    const T* b = bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr;
    T* y = static_cast<T*>(out.raw_data());
    T* mp = static_cast<T*>(mean.raw_data());
    T* rp = static_cast<T*>(rstd.raw_data());
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * cols;
      double s = 0, ss = 0;
      for (int64_t c = 0; c < cols; ++c) s += xr[c];
      const double mu = s / static_cast<double>(cols);
      for (int64_t c = 0; c < cols; ++c) ss += (xr[c] - mu) * (xr[c] - mu);
      const double rs = 1.0 / std::sqrt(ss / static_cast<double>(cols) + eps);
      mp[r] = static_cast<T>(mu);
      rp[r] = static_cast<T>(rs);
      T* yr = y + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        T v = static_cast<T>((xr[c] - mu) * rs);
        yr[c] = v * (w ? w[c] : T(1)) + (b ? b[c] : T(0));
      }
    }
  });
}

void CpuBackend::layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                     const Tensor& mean, const Tensor& rstd, const Tensor& grad_x,
                                     const Tensor& grad_w, const Tensor& grad_b) {
  dispatch_floating(x.dtype(), "layer_norm backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = mean.numel(), cols = rows ? x.numel() / rows : 0;
    const T* g = static_cast<const T*>(grad.raw_data());
    const T* xp = static_cast<const T*>(x.raw_data());
    const T* w = weight.defined() ? static_cast<const T*>(weight.raw_data()) : nullptr;
    const T* mp = static_cast<const T*>(mean.raw_data());
    const T* rp = static_cast<const T*>(rstd.raw_data());
    T* gx = grad_x.defined() ? static_cast<T*>(grad_x.raw_data()) : nullptr;
    std::vector<double> gw(cols, 0.0), gb(cols, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * cols;
      const T* xr = xp + r * cols;
      const double mu = mp[r], rs = rp[r];
      double sum_dy = 0, sum_dy_xhat = 0;
      for (int64_t c = 0; c < cols; ++c) {
        double xhat = (xr[c] - mu) * rs;
        double dy = gr[c] * (w ? static_cast<double>(w[c]) : 1.0);
        sum_dy += dy;
        sum_dy_xhat += dy * xhat;
        gw[c] += gr[c] * xhat;
        gb[c] += gr[c];
      }
      if (!gx) continue;
      const double inv_n = 1.0 / static_cast<double>(cols);
      for (int64_t c = 0; c < cols; ++c) {
        double xhat = (xr[c] - mu) * rs;
        double dy = gr[c] * (w ? static_cast<double>(w[c]) : 1.0);
        gx[r * cols + c] = static_cast<T>(rs * (dy - inv_n * sum_dy - xhat * inv_n * sum_dy_xhat));
      }
    }
    if (grad_w.defined()) {
      T* o = static_cast<T*>(grad_w.raw_data());
      for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<T>(gw[c]);
    }
    if (grad_b.defined()) {
      T* o = static_cast<T*>(grad_b.raw_data());
      for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<T>(gb[c]);
    }
  });
}

void CpuBackend::index_select(const Tensor& in, int64_t dim, const Tensor& index,
                              const Tensor& out) {
  const Around a = around(in, dim);
  const int64_t m = index.numel();
  const int64_t* idx = index.data_ptr<int64_t>();
  const size_t es = in.element_size();
  const char* src = static_cast<const char*>(in.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const size_t row = static_cast<size_t>(a.inner) * es;
  for (int64_t i = 0; i < m; ++i) check_index(idx[i], a.n, "index_select");
  for (int64_t o = 0; o < a.outer; ++o)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(dst + (o * m + i) * row, src + (o * a.n + idx[i]) * row, row);
}

void CpuBackend::index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  dispatch_arith(out.dtype(), "index_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Around a = around(out, dim);
    const int64_t m = index.numel();
    const int64_t* idx = index.data_ptr<int64_t>();
    const T* s = static_cast<const T*>(src.raw_data());
    T* o = static_cast<T*>(out.raw_data());
    for (int64_t i = 0; i < m; ++i) check_index(idx[i], a.n, "index_add");
    for (int64_t p = 0; p < a.outer; ++p)
      for (int64_t i = 0; i < m; ++i) {
        T* orow = o + (p * a.n + idx[i]) * a.inner;
        const T* srow = s + (p * m + i) * a.inner;
        for (int64_t c = 0; c < a.inner; ++c) orow[c] += srow[c];
      }
  });
}

void CpuBackend::gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) {
  dispatch_all(in.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Around ai = around(in, dim), ax = around(index, dim);
    COHORT_CHECK(ai.outer == ax.outer && ai.inner == ax.inner,
                 "gather: index shape must match the input outside dimension ", dim);
    const T* x = static_cast<const T*>(in.raw_data());
    const int64_t* idx = index.data_ptr<int64_t>();
    T* o = static_cast<T*>(out.raw_data());
    for (int64_t p = 0; p < ax.outer; ++p)
      for (int64_t i = 0; i < ax.n; ++i)
        for (int64_t c = 0; c < ax.inner; ++c) {
          int64_t v = idx[(p * ax.n + i) * ax.inner + c];
          check_index(v, ai.n, "gather");
          o[(p * ax.n + i) * ax.inner + c] = x[(p * ai.n + v) * ai.inner + c];
        }
  });
}

void CpuBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                             const Tensor& src) {
  dispatch_arith(out.dtype(), "scatter_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Around ao = around(out, dim), ax = around(index, dim);
    COHORT_CHECK(ao.outer == ax.outer && ao.inner == ax.inner,
                 "scatter_add: index shape must match the output outside dimension ", dim);
    const T* s = static_cast<const T*>(src.raw_data());
    const int64_t* idx = index.data_ptr<int64_t>();
    T* o = static_cast<T*>(out.raw_data());
    for (int64_t p = 0; p < ax.outer; ++p)
      for (int64_t i = 0; i < ax.n; ++i)
        for (int64_t c = 0; c < ax.inner; ++c) {
          int64_t v = idx[(p * ax.n + i) * ax.inner + c];
          check_index(v, ao.n, "scatter_add");
          o[(p * ao.n + v) * ao.inner + c] += s[(p * ax.n + i) * ax.inner + c];
        }
  });
}

}  // namespace cohort::core::cpu
