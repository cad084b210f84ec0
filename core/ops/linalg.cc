// Matrix products through the device BLAS. Transposed views are passed as BLAS transpose flags
// instead of being copied, so backward's a^T @ g costs no extra memory traffic.
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

struct BlasOperand {
  Tensor t;
  bool trans = false;
  int64_t ld = 0;
};

// The last two dims of t as a BLAS matrix, copying only when neither layout fits.
BlasOperand blas_operand(const Tensor& t) {
  const int64_t r = t.size(-2), c = t.size(-1), sr = t.stride(-2), sc = t.stride(-1);
  if ((c <= 1 || sc == 1) && (r <= 1 || sr >= std::max<int64_t>(c, 1)))
    return {t, false, r <= 1 ? std::max<int64_t>(c, 1) : sr};
  if ((r <= 1 || sr == 1) && (c <= 1 || sc >= std::max<int64_t>(r, 1)))
    return {t, true, c <= 1 ? std::max<int64_t>(r, 1) : sc};
  Tensor cc = t.contiguous();
  return {cc, false, std::max<int64_t>(c, 1)};
}

}  // namespace

void detail::batched_gemm(const Tensor& a, const Tensor& b, const Tensor& c, double beta,
                          double alpha) {
  BlasOperand A = blas_operand(a), B = blas_operand(b);
  GemmArgs g;
  g.trans_a = A.trans;
  g.trans_b = B.trans;
  g.m = a.size(-2);
  g.k = a.size(-1);
  g.n = b.size(-1);
  g.lda = A.ld;
  g.ldb = B.ld;
  g.ldc = std::max<int64_t>(g.n, 1);
  g.beta = beta;
  g.alpha = alpha;
  g.batch = c.size(0);
  g.stride_a = a.size(0) == 1 ? 0 : A.t.stride(0);
  g.stride_b = b.size(0) == 1 ? 0 : B.t.stride(0);
  g.stride_c = c.stride(0);
  if (g.k == 0) {
    if (beta == 0) backend_for(c.device()).fill(c, 0);
    return;
  }
  backend_for(c.device()).gemm(g, A.t, B.t, c);
}

namespace {

// 2-D product without autograd.
Tensor mm_raw(const Tensor& a, const Tensor& b) {
  Tensor c = empty({a.size(0), b.size(1)}, a.options());
  detail::batched_gemm(a.unsqueeze(0), b.unsqueeze(0), c.unsqueeze(0), 0.0);
  return c;
}

namespace {

// a @ b as the gradient of the op's input `input`, of shape `shape`: written straight into that
// input's grad_destination when it has one (DDP's bucket), else into a new tensor.
Tensor mm_grad(const Tensor& a, const Tensor& b, size_t input, const Shape& shape) {
  Tensor d = autograd::grad_destination(input);
  if (!d.defined() || d.dtype() != a.dtype() || d.device() != a.device() ||
      d.numel() != a.size(0) * b.size(1))
    return mm_raw(a, b).view(shape);
  detail::batched_gemm(a.unsqueeze(0), b.unsqueeze(0), d.view({1, a.size(0), b.size(1)}), 0.0);
  d.bump_version();
  return d;
}

}  // namespace

Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  COHORT_CHECK(b.size(-2) == k, "matmul: shapes ", shape_str(a.sizes()), " and ",
               shape_str(b.sizes()), " cannot be multiplied (", k, " != ", b.size(-2), ")");
  Shape ba(a.sizes().begin(), a.sizes().end() - 2), bb(b.sizes().begin(), b.sizes().end() - 2);
  Shape batch = broadcast_shapes(ba, bb);
  int64_t nb = shape_numel(batch);
  auto as3 = [&](const Tensor& t, const Shape& own, int64_t r, int64_t c) {
    if (own.empty() || shape_numel(own) == 1) return t.reshape({1, r, c});
    Shape full = batch;
    full.push_back(r);
    full.push_back(c);
    return t.expand(full).reshape({nb, r, c});
  };
  Tensor out;
  {
    autograd::NoGradGuard g;
    Tensor a3 = as3(a, ba, m, k), b3 = as3(b, bb, k, n);
    out = empty({nb, m, n}, a.options());
    detail::batched_gemm(a3, b3, out, 0.0);
    Shape full = batch;
    full.push_back(m);
    full.push_back(n);
    out = out.view(full);
  }
  if (autograd::any_requires_grad({&a, &b})) {
    SavedTensor sa(a), sb(b);
    Shape sha = a.sizes(), shb = b.sizes();
    autograd::record("MatmulBackward", {a, b}, {&out}, [=](const TensorList& g, const Needs& nd) {
      Tensor ga, gb;
      if (nd[0]) ga = sum_to(matmul(g[0], sb.get().transpose(-1, -2)), sha);
      if (nd[1]) gb = sum_to(matmul(sa.get().transpose(-1, -2), g[0]), shb);
      return TensorList{ga, gb};
    });
  }
  return out;
}

}  // namespace

namespace {
thread_local DType t_autocast = DType::kFloat32;
}  // namespace

AutocastGuard::AutocastGuard(DType dtype) : previous_(t_autocast) {
  COHORT_CHECK(dtype == DType::kFloat32 || dtype == DType::kBFloat16 || dtype == DType::kFloat16,
               "autocast: dtype must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  t_autocast = dtype;
}
AutocastGuard::~AutocastGuard() { t_autocast = previous_; }
DType autocast_dtype() { return t_autocast; }

bool autocasts(const Tensor& t) {
  return t_autocast != DType::kFloat32 && t.device().is_cuda() &&
         (t.dtype() == DType::kFloat32 || (is_half_float(t) && t.dtype() != t_autocast));
}

bool is_half_float(const Tensor& t) {
  return t.dtype() == DType::kBFloat16 || t.dtype() == DType::kFloat16;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  COHORT_CHECK(a.device() == b.device(), "matmul: tensors are on different devices (",
               a.device().str(), " and ", b.device().str(), ")");
  if (autocasts(a) || autocasts(b)) return matmul(a.to(t_autocast), b.to(t_autocast));
  COHORT_CHECK(a.dtype() == b.dtype(), "matmul: dtypes differ (", dtype_name(a.dtype()), " and ",
               dtype_name(b.dtype()), ")");
  COHORT_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need at least 1 dimension");
  if (a.dim() == 1 && b.dim() == 1) return matmul_nd(a.unsqueeze(0), b.unsqueeze(1)).reshape({});
  if (a.dim() == 1) return matmul_nd(a.unsqueeze(0), b).squeeze(-2);
  if (b.dim() == 1) return matmul_nd(a, b.unsqueeze(1)).squeeze(-1);
  if (a.dim() > 2 && b.dim() == 2 && a.size(-1) > 0) {
    // A batch times one matrix (a weight, an output head) is one product over all rows: a single
    // large GEMM forward, and in backward one GEMM for b's gradient instead of a sum of products.
    Shape out_shape = a.sizes();
    out_shape.back() = b.size(1);
    return matmul_nd(a.reshape({-1, a.size(-1)}), b).view(out_shape);
  }
  return matmul_nd(a, b);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  COHORT_CHECK(weight.dim() == 2, "linear: weight must be 2-D, got ", shape_str(weight.sizes()));
  COHORT_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input of shape ",
               shape_str(x.sizes()), " does not match weight of shape ", shape_str(weight.sizes()),
               " (expected last dim ", weight.size(1), ")");
  if (x.device() == weight.device() && (autocasts(x) || autocasts(weight))) {
    return linear(x.to(t_autocast), weight.to(t_autocast),
                  bias.defined() ? bias.to(t_autocast) : Tensor());
  }
  COHORT_CHECK(x.dtype() == weight.dtype() && x.device() == weight.device(),
               "linear: input and weight differ in dtype or device");
  const int64_t in = weight.size(1), outf = weight.size(0);
  if (bias.defined()) {
    COHORT_CHECK(bias.dim() == 1 && bias.size(0) == outf, "linear: bias of shape ",
                 shape_str(bias.sizes()), " does not match ", outf, " output features");
  }
  Shape out_shape = x.sizes();
  out_shape.back() = outf;
  Tensor out;
  Tensor x2;
  {
    autograd::NoGradGuard g;
    x2 = x.reshape({-1, in});
    out = empty({x2.size(0), outf}, x.options());
    double beta = 0.0;
    if (bias.defined()) {
      backend_for(out.device()).copy(bias, out);  // broadcast bias into every row, then accumulate
      beta = 1.0;
    }
    detail::batched_gemm(x2.unsqueeze(0), weight.t().unsqueeze(0), out.unsqueeze(0), beta);
    out = out.view(out_shape);
  }
  std::vector<Tensor> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  if (autograd::any_requires_grad(inputs)) {
    SavedTensor sx(x2), sw(weight);
    Shape x_shape = x.sizes();
    bool has_bias = bias.defined();
    autograd::record("LinearBackward", inputs, {&out}, [=](const TensorList& g, const Needs& n) {
      Tensor g2 = g[0].reshape({-1, outf});
      TensorList r(has_bias ? 3 : 2);
      if (n[0]) r[0] = mm_raw(g2, sw.get()).view(x_shape);
      if (n[1]) r[1] = mm_grad(g2.t(), sx.get(), 1, {outf, in});
      if (has_bias && n[2]) r[2] = mm_grad(ones({1, g2.size(0)}, g2.options()), g2, 2, {outf});
      return r;
    });
  }
  return out;
}

}  // namespace cohort::core
