// Neural-network functions: softmax, fused cross-entropy, losses, layer norm, embedding, dropout
// and scaled-dot-product attention.
#include <cmath>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/backend.h"
#include "core/ops/gemm.h"
#include "core/ops/ops.h"

namespace cohort::core {

using autograd::SavedTensor;
using autograd::TensorList;
using Needs = std::vector<bool>;

namespace {

Tensor softmax_impl(const Tensor& a, int64_t dim, bool log) {
  COHORT_CHECK(is_floating(a.dtype()), log ? "log_softmax" : "softmax",
               " needs a floating-point tensor, got ", dtype_name(a.dtype()));
  if (a.dim() == 0) return softmax_impl(a.reshape({1}), 0, log).reshape({});
  dim = wrap_dim(dim, a.dim());
  if (dim != a.dim() - 1) {
    return softmax_impl(a.transpose(dim, -1), a.dim() - 1, log).transpose(dim, -1);
  }
  Tensor x = a.contiguous();
  Tensor out = empty(x.sizes(), x.options());
  backend_for(x.device()).softmax(x.detach(), out, log);
  if (autograd::any_requires_grad({&x})) {
    SavedTensor so(out);
    autograd::record(log ? "LogSoftmaxBackward" : "SoftmaxBackward", {x}, {&out},
                     [so, log](const TensorList& g, const Needs&) {
                       Tensor gc = g[0].contiguous();
                       Tensor gi = empty(gc.sizes(), gc.options());
                       backend_for(gc.device()).softmax_backward(gc, so.get(), gi, log);
                       return TensorList{gi};
                     });
  }
  return out;
}

Tensor reduce_loss(const Tensor& rows, Reduction r, const Tensor& count) {
  switch (r) {
    case Reduction::kNone:
      return rows;
    case Reduction::kSum:
      return sum(rows);
    case Reduction::kMean:
      return count.defined() ? div(sum(rows), count) : mean(rows);
  }
  return rows;
}

}  // namespace

Tensor softmax(const Tensor& a, int64_t dim) {
  if (autocast_dtype() != DType::kFloat32 && is_half_float(a))
    return softmax_impl(a.to(DType::kFloat32), dim, false);
  return softmax_impl(a, dim, false);
}
Tensor log_softmax(const Tensor& a, int64_t dim) {
  if (autocast_dtype() != DType::kFloat32 && is_half_float(a))
    return softmax_impl(a.to(DType::kFloat32), dim, true);
  return softmax_impl(a, dim, true);
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& opts) {
  // Under autocast the 16-bit logits of a matmul are scored in float32 (PyTorch's fp32 list).
  if (autocast_dtype() != DType::kFloat32 && is_half_float(logits))
    return cross_entropy(logits.to(DType::kFloat32), target, opts);
  COHORT_CHECK(target.dtype() == DType::kInt64,
               "cross_entropy: target must be int64 class indices, got ",
               dtype_name(target.dtype()));
  COHORT_CHECK(logits.dim() >= 1, "cross_entropy: logits need a class dimension");
  COHORT_CHECK(opts.label_smoothing >= 0 && opts.label_smoothing <= 1,
               "cross_entropy: label_smoothing must be in [0, 1], got ", opts.label_smoothing);
  // Bring classes to the last dim: [N, C, d...] -> [N*d..., C].
  Tensor x = logits;
  if (logits.dim() == 1) x = logits.unsqueeze(0);
  const int64_t classes = x.size(1);
  if (x.dim() > 2) {
    Shape perm{0};
    for (int64_t d = 2; d < x.dim(); ++d) perm.push_back(d);
    perm.push_back(1);
    x = x.permute(perm);
  }
  x = x.reshape({-1, classes}).contiguous();
  Tensor t = target.reshape({-1}).contiguous();
  COHORT_CHECK(t.numel() == x.size(0), "cross_entropy: ", t.numel(), " targets for ", x.size(0),
               " rows of logits (logits ", shape_str(logits.sizes()), ", target ",
               shape_str(target.sizes()), ")");
  Tensor rows = empty({x.size(0)}, x.options());
  backend_for(x.device())
      .cross_entropy(x.detach(), t, opts.ignore_index, opts.label_smoothing, rows);
  if (autograd::any_requires_grad({&x})) {
    SavedTensor sx(x), st(t);
    int64_t ignore = opts.ignore_index;
    double ls = opts.label_smoothing;
    autograd::record("CrossEntropyBackward", {x}, {&rows}, [=](const TensorList& g, const Needs&) {
      Tensor scale = g[0].contiguous();
      Tensor gx = empty(sx.get().sizes(), sx.get().options());
      backend_for(gx.device()).cross_entropy_backward(sx.get(), st.get(), ignore, ls, scale, gx);
      return TensorList{gx};
    });
  }
  Tensor count;
  if (opts.reduction == Reduction::kMean) {
    autograd::NoGradGuard g;
    count = sum(ne(t, scalar_tensor(static_cast<double>(opts.ignore_index), t.options())))
                .to(x.dtype());
  }
  if (opts.reduction == Reduction::kNone) return rows.view(target.sizes());
  return reduce_loss(rows, opts.reduction, count);
}

Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction) {
  if (autocast_dtype() != DType::kFloat32 && (is_half_float(input) || is_half_float(target)))
    return mse_loss(input.to(DType::kFloat32), target.to(DType::kFloat32), reduction);
  COHORT_CHECK(input.sizes() == target.sizes(), "mse_loss: input ", shape_str(input.sizes()),
               " and target ", shape_str(target.sizes()), " differ in shape");
  return reduce_loss(square(sub(input, target)), reduction, Tensor());
}

Tensor layer_norm(const Tensor& input, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps) {
  if (autocast_dtype() != DType::kFloat32 && is_half_float(input))
    return layer_norm(input.to(DType::kFloat32), normalized_shape, weight, bias, eps);
  const int64_t nd = static_cast<int64_t>(normalized_shape.size());
  COHORT_CHECK(nd >= 1 && input.dim() >= nd, "layer_norm: normalized_shape ",
               shape_str(normalized_shape), " does not fit input ", shape_str(input.sizes()));
  for (int64_t i = 0; i < nd; ++i) {
    COHORT_CHECK(input.size(input.dim() - nd + i) == normalized_shape[i], "layer_norm: input ",
                 shape_str(input.sizes()), " does not end in normalized_shape ",
                 shape_str(normalized_shape));
  }
  const int64_t cols = shape_numel(normalized_shape);
  const int64_t rows = cols ? input.numel() / cols : 0;
  if (weight.defined())
    COHORT_CHECK(weight.numel() == cols, "layer_norm: weight has ", weight.numel(),
                 " elements, expected ", cols);
  if (bias.defined())
    COHORT_CHECK(bias.numel() == cols, "layer_norm: bias has ", bias.numel(),
                 " elements, expected ", cols);
  Tensor x = input.contiguous();
  Tensor w = weight.defined() ? weight.contiguous() : Tensor();
  Tensor b = bias.defined() ? bias.contiguous() : Tensor();
  Tensor out = empty(x.sizes(), x.options());
  Tensor mu = empty({rows}, x.options()), rstd = empty({rows}, x.options());
  backend_for(x.device())
      .layer_norm(x.detach(), w.defined() ? w.detach() : w, b.defined() ? b.detach() : b, eps, out,
                  mu, rstd);
  std::vector<Tensor> inputs{x};
  if (w.defined()) inputs.push_back(w);
  if (b.defined()) inputs.push_back(b);
  if (autograd::any_requires_grad(inputs)) {
    SavedTensor sx(x), sw(w), smu(mu), sr(rstd);
    bool has_w = w.defined(), has_b = b.defined();
    Shape bshape = has_b ? b.sizes() : Shape{};
    autograd::record("LayerNormBackward", inputs, {&out}, [=](const TensorList& g, const Needs& n) {
      Tensor gc = g[0].contiguous();
      const Tensor& xs = sx.get();
      Tensor gx = n[0] ? empty(xs.sizes(), xs.options()) : Tensor();
      Tensor gw = has_w && n[1] ? empty(sw.get().sizes(), xs.options()) : Tensor();
      size_t bi = has_w ? 2 : 1;
      Tensor gb = has_b && n[bi] ? empty({cols}, xs.options()) : Tensor();
      backend_for(xs.device())
          .layer_norm_backward(gc, xs, has_w ? sw.get() : Tensor(), smu.get(), sr.get(), gx, gw,
                               gb);
      TensorList r{gx};
      if (has_w) r.push_back(gw);
      if (has_b) r.push_back(gb.defined() ? gb.view(bshape) : gb);
      return r;
    });
  }
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  COHORT_CHECK(weight.dim() == 2, "embedding: weight must be 2-D, got ", shape_str(weight.sizes()));
  COHORT_CHECK(indices.dtype() == DType::kInt64 || indices.dtype() == DType::kInt32,
               "embedding: indices must be int64 or int32, got ", dtype_name(indices.dtype()));
  Shape out_shape = indices.sizes();
  out_shape.push_back(weight.size(1));
  return index_select(weight, 0, indices.reshape({-1})).view(out_shape);
}

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  COHORT_CHECK(p >= 0 && p <= 1, "dropout: probability must be in [0, 1], got ", p);
  if (!training || p == 0) return x;
  if (p == 1) return mul(x, 0.0);
  Tensor mask;
  {
    autograd::NoGradGuard g;
    mask = mul(ge(rand(x.sizes(), x.options(), gen), scalar_tensor(p, x.options())).to(x.dtype()),
               1.0 / (1.0 - p));
  }
  return mul(x, mask);
}

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    bool causal) {
  COHORT_CHECK(q.dim() >= 2 && k.dim() >= 2 && v.dim() >= 2,
               "scaled_dot_product_attention: q, k, v need at least 2 dimensions");
  COHORT_CHECK(q.size(-1) == k.size(-1),
               "scaled_dot_product_attention: q and k head sizes differ (", q.size(-1), " vs ",
               k.size(-1), ")");
  COHORT_CHECK(k.size(-2) == v.size(-2), "scaled_dot_product_attention: k has ", k.size(-2),
               " positions and v ", v.size(-2));
  if (autocasts(q) || autocasts(k) || autocasts(v)) {
    const DType low = autocast_dtype();
    return scaled_dot_product_attention(q.to(low), k.to(low), v.to(low), causal);
  }
  COHORT_CHECK(q.dtype() == k.dtype() && k.dtype() == v.dtype() && q.device() == k.device() &&
                   k.device() == v.device(),
               "scaled_dot_product_attention: q, k and v differ in dtype or device");
  const Shape batch(q.sizes().begin(), q.sizes().end() - 2);
  if (Shape(k.sizes().begin(), k.sizes().end() - 2) != batch ||
      Shape(v.sizes().begin(), v.sizes().end() - 2) != batch) {
    // Broadcast batch dims: the composite form.
    Tensor scores =
        mul(matmul(q, k.transpose(-1, -2)), 1.0 / std::sqrt(static_cast<double>(q.size(-1))));
    if (causal) {
      const int64_t lq = q.size(-2), lk = k.size(-2);
      std::vector<bool> m(static_cast<size_t>(lq * lk));
      for (int64_t i = 0; i < lq; ++i)
        for (int64_t j = 0; j < lk; ++j) m[i * lk + j] = j > i;
      scores = masked_fill(scores, from_vector(m, {lq, lk}).to(q.device()), -INFINITY);
    }
    return matmul(softmax(scores, -1), v);
  }
  // One scaled GEMM for the scores, a fused masked softmax, one GEMM for the output; backward
  // keeps only the probabilities (in q's dtype: bfloat16 under autocast).
  const int64_t nb = shape_numel(batch), lq = q.size(-2), lk = k.size(-2), d = q.size(-1),
                dv = v.size(-1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  Tensor q3 = q.contiguous().reshape({nb, lq, d}), k3 = k.contiguous().reshape({nb, lk, d}),
         v3 = v.contiguous().reshape({nb, lk, dv});
  Tensor probs, out;
  {
    autograd::NoGradGuard guard;
    Backend& be = backend_for(q.device());
    Tensor scores = empty({nb, lq, lk}, q.options());
    detail::batched_gemm(q3.detach(), k3.detach().transpose(1, 2), scores, 0, scale);
    probs = empty({nb, lq, lk}, q.options());
    be.attention_softmax(scores, causal, probs);
    out = empty({nb, lq, dv}, q.options());
    detail::batched_gemm(probs, v3.detach(), out, 0);
  }
  Shape out_shape = batch;
  out_shape.push_back(lq);
  out_shape.push_back(dv);
  out = out.view(out_shape);
  if (autograd::any_requires_grad({&q, &k, &v})) {
    SavedTensor sq(q3), sk(k3), sv(v3), sp(probs);
    const Shape qs = q.sizes(), ks = k.sizes(), vs = v.sizes();
    autograd::record(
        "ScaledDotProductAttentionBackward", {q, k, v}, {&out},
        [=](const TensorList& g, const Needs& nd) {
          Tensor go = g[0].contiguous().reshape({nb, lq, dv});
          const Tensor& p = sp.get();
          TensorList r(3);
          if (nd[2]) {
            Tensor gv = empty({nb, lk, dv}, go.options());
            detail::batched_gemm(p.transpose(1, 2), go, gv, 0);
            r[2] = gv.view(vs);
          }
          if (nd[0] || nd[1]) {
            Tensor gp = empty({nb, lq, lk}, go.options());
            detail::batched_gemm(go, sv.get().transpose(1, 2), gp, 0);
            Tensor gs = empty({nb, lq, lk}, go.options());
            backend_for(go.device()).attention_softmax_backward(gp, p, causal, scale, gs);
            if (nd[0]) {
              Tensor gq = empty({nb, lq, d}, go.options());
              detail::batched_gemm(gs, sk.get(), gq, 0);
              r[0] = gq.view(qs);
            }
            if (nd[1]) {
              Tensor gk = empty({nb, lk, d}, go.options());
              detail::batched_gemm(gs.transpose(1, 2), sq.get(), gk, 0);
              r[1] = gk.view(ks);
            }
          }
          return r;
        });
  }
  return out;
}

}  // namespace cohort::core
