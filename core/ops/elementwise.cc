// Elementwise op front ends with broadcasting, type promotion and their backward formulas.
#include <cmath>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/backend.h"
#include "core/ops/ops.h"

namespace cohort::core {

using autograd::SavedTensor;
using autograd::TensorList;
using Needs = std::vector<bool>;

namespace {

Backend& be(const Tensor& t) { return backend_for(t.device()); }

void check_pair(const Tensor& a, const Tensor& b, const char* op) {
  COHORT_CHECK(a.defined() && b.defined(), op, ": undefined tensor argument");
  COHORT_CHECK(a.device() == b.device(), op, ": tensors are on different devices (",
               a.device().str(), " and ", b.device().str(), ")");
}

// Runs a binary kernel after promoting both operands to a common dtype; never records history.
Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, const char* name,
                      Scalars s = {}, bool bool_out = false) {
  check_pair(a, b, name);
  autograd::NoGradGuard guard;
  DType t = promote_types(a.dtype(), b.dtype());
  Tensor x = a.to(t), y = b.to(t);
  Shape shape = broadcast_shapes(a.sizes(), b.sizes());
  Tensor out = empty(shape, x.options().with_dtype(bool_out ? DType::kBool : t));
  be(x).binary(op, x, y, out, s);
  return out;
}

Tensor unary_forward(UnaryOp op, const Tensor& a, Scalars s = {}) {
  Tensor out = empty(a.sizes(), a.options());
  be(a).unary(op, a, out, s);
  return out;
}

bool is_integral_value(double v) { return std::floor(v) == v && std::isfinite(v); }

// A float tensor for ops whose result is fractional (PyTorch promotes integers to float32).
Tensor as_floating(const Tensor& a) {
  if (is_floating(a.dtype())) return a;
  autograd::NoGradGuard g;
  return a.to(DType::kFloat32);
}

Tensor record_unary(const char* name, const Tensor& a, Tensor out,
                    std::function<Tensor(const Tensor& g)> back) {
  if (autograd::any_requires_grad({&a})) {
    autograd::record(name, {a}, {&out},
                     [back = std::move(back)](const TensorList& g, const Needs&) {
                       return TensorList{back(g[0])};
                     });
  }
  return out;
}

Tensor affine(const Tensor& a, double scale, double shift, const char* name) {
  Tensor x = (is_integral_value(scale) && is_integral_value(shift)) ? a : as_floating(a);
  Tensor out = unary_forward(UnaryOp::kAffine, x, {scale, shift});
  return record_unary(name, a, out, [scale](const Tensor& g) { return mul(g, scale); });
}

}  // namespace

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t x = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t y = i < n - b.size() ? 1 : b[i - (n - b.size())];
    COHORT_CHECK(x == y || x == 1 || y == 1, "shapes ", shape_str(a), " and ", shape_str(b),
                 " cannot be broadcast together");
    out[i] = x == 1 ? y : x;
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kAdd, a, b, "add");
  if (autograd::any_requires_grad({&a, &b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    autograd::record("AddBackward", {a, b}, {&out}, [sa, sb](const TensorList& g, const Needs& n) {
      return TensorList{n[0] ? sum_to(g[0], sa) : Tensor(), n[1] ? sum_to(g[0], sb) : Tensor()};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kSub, a, b, "sub");
  if (autograd::any_requires_grad({&a, &b})) {
    Shape sa = a.sizes(), sb = b.sizes();
    autograd::record("SubBackward", {a, b}, {&out}, [sa, sb](const TensorList& g, const Needs& n) {
      return TensorList{n[0] ? sum_to(g[0], sa) : Tensor(),
                        n[1] ? neg(sum_to(g[0], sb)) : Tensor()};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kMul, a, b, "mul");
  if (autograd::any_requires_grad({&a, &b})) {
    SavedTensor sa(b.requires_grad() || b.grad_fn() ? a : Tensor());
    SavedTensor sb(a.requires_grad() || a.grad_fn() ? b : Tensor());
    Shape sha = a.sizes(), shb = b.sizes();
    autograd::record("MulBackward", {a, b}, {&out}, [=](const TensorList& g, const Needs& n) {
      return TensorList{n[0] ? sum_to(mul(g[0], sb.get()), sha) : Tensor(),
                        n[1] ? sum_to(mul(g[0], sa.get()), shb) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kDiv, as_floating(a), as_floating(b), "div");
  if (autograd::any_requires_grad({&a, &b})) {
    SavedTensor sb(b), so(out);
    Shape sha = a.sizes(), shb = b.sizes();
    autograd::record("DivBackward", {a, b}, {&out}, [=](const TensorList& g, const Needs& n) {
      Tensor q = div(g[0], sb.get());
      return TensorList{n[0] ? sum_to(q, sha) : Tensor(),
                        n[1] ? sum_to(neg(mul(q, so.get())), shb) : Tensor()};
    });
  }
  return out;
}

Tensor add(const Tensor& a, double s) { return affine(a, 1.0, s, "AddScalarBackward"); }
Tensor sub(const Tensor& a, double s) { return affine(a, 1.0, -s, "SubScalarBackward"); }
Tensor mul(const Tensor& a, double s) { return affine(a, s, 0.0, "MulScalarBackward"); }
Tensor div(const Tensor& a, double s) {
  Tensor x = as_floating(a);
  return affine(x, 1.0 / s, 0.0, "DivScalarBackward");
}

Tensor pow(const Tensor& a, double e) {
  Tensor x = as_floating(a);
  Tensor out = unary_forward(UnaryOp::kPowScalar, x, {e, 0});
  SavedTensor sx(x);
  return record_unary("PowBackward", a, out, [sx, e](const Tensor& g) {
    Tensor r = empty(g.sizes(), g.options());
    backend_for(g.device()).binary(BinaryOp::kPowScalarGrad, g, sx.get(), r, {e, 0});
    return r;
  });
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::kPow, as_floating(a), as_floating(b), "pow");
  if (autograd::any_requires_grad({&a, &b})) {
    SavedTensor sa(a), sb(b), so(out);
    Shape sha = a.sizes(), shb = b.sizes();
    autograd::record("PowTensorBackward", {a, b}, {&out}, [=](const TensorList& g, const Needs& n) {
      Tensor ga, gb;
      if (n[0]) ga = sum_to(mul(mul(g[0], sb.get()), pow(sa.get(), sub(sb.get(), 1.0))), sha);
      if (n[1]) gb = sum_to(mul(mul(g[0], so.get()), log(sa.get())), shb);
      return TensorList{ga, gb};
    });
  }
  return out;
}

namespace {
Tensor extremum(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  Tensor out = binary_forward(op, a, b, name);
  if (autograd::any_requires_grad({&a, &b})) {
    SavedTensor sa(a), sb(b);
    Shape sha = a.sizes(), shb = b.sizes();
    bool is_max = op == BinaryOp::kMaximum;
    autograd::record(name, {a, b}, {&out}, [=](const TensorList& g, const Needs& n) {
      // Ties split the gradient evenly, as PyTorch does.
      Tensor wins = (is_max ? gt(sa.get(), sb.get()) : lt(sa.get(), sb.get())).to(g[0].dtype());
      Tensor ties = eq(sa.get(), sb.get()).to(g[0].dtype());
      Tensor wa = add(wins, mul(ties, 0.5));
      Tensor wb = sub(sub(ones_like(wa), wins), mul(ties, 0.5));
      return TensorList{n[0] ? sum_to(mul(g[0], wa), sha) : Tensor(),
                        n[1] ? sum_to(mul(g[0], wb), shb) : Tensor()};
    });
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) {
  return extremum(BinaryOp::kMaximum, a, b, "MaximumBackward");
}
Tensor minimum(const Tensor& a, const Tensor& b) {
  return extremum(BinaryOp::kMinimum, a, b, "MinimumBackward");
}

Tensor neg(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kNeg, a);
  return record_unary("NegBackward", a, out, [](const Tensor& g) { return neg(g); });
}

Tensor exp(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kExp, as_floating(a));
  SavedTensor so(out);
  return record_unary("ExpBackward", a, out, [so](const Tensor& g) { return mul(g, so.get()); });
}

Tensor log(const Tensor& a) {
  Tensor x = as_floating(a);
  Tensor out = unary_forward(UnaryOp::kLog, x);
  SavedTensor sx(x);
  return record_unary("LogBackward", a, out, [sx](const Tensor& g) { return div(g, sx.get()); });
}

Tensor sqrt(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kSqrt, as_floating(a));
  SavedTensor so(out);
  return record_unary("SqrtBackward", a, out,
                      [so](const Tensor& g) { return div(g, mul(so.get(), 2.0)); });
}

Tensor rsqrt(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kRsqrt, as_floating(a));
  SavedTensor so(out);
  return record_unary("RsqrtBackward", a, out,
                      [so](const Tensor& g) { return mul(mul(g, pow(so.get(), 3.0)), -0.5); });
}

Tensor abs(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kAbs, a);
  SavedTensor sa(a);
  return record_unary("AbsBackward", a, out,
                      [sa](const Tensor& g) { return mul(g, sign(sa.get())); });
}

Tensor sign(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kSign, a);
  return record_unary("SignBackward", a, out, [](const Tensor& g) { return zeros_like(g); });
}

Tensor square(const Tensor& a) {
  Tensor out = unary_forward(UnaryOp::kSquare, a);
  SavedTensor sa(a);
  return record_unary("SquareBackward", a, out,
                      [sa](const Tensor& g) { return mul(mul(g, sa.get()), 2.0); });
}

Tensor clamp(const Tensor& a, std::optional<double> lo, std::optional<double> hi) {
  double l = lo.value_or(-INFINITY), h = hi.value_or(INFINITY);
  COHORT_CHECK(l <= h, "clamp: min ", l, " is greater than max ", h);
  Tensor out = unary_forward(UnaryOp::kClamp, a, {l, h});
  SavedTensor sa(a);
  return record_unary("ClampBackward", a, out, [sa, l, h](const Tensor& g) {
    Tensor r = empty(g.sizes(), g.options());
    backend_for(g.device()).binary(BinaryOp::kClampGrad, g, sa.get(), r, {l, h});
    return r;
  });
}

namespace {
// Activations whose backward is one fused kernel of (grad, saved).
Tensor activation(UnaryOp fwd, BinaryOp bwd, const char* name, const Tensor& a, bool save_output) {
  Tensor out = unary_forward(fwd, a);
  SavedTensor saved(save_output ? out : a);
  return record_unary(name, a, out, [saved, bwd](const Tensor& g) {
    Tensor r = empty(g.sizes(), g.options());
    backend_for(g.device()).binary(bwd, g, saved.get(), r, {});
    return r;
  });
}
}  // namespace

Tensor relu(const Tensor& a) {
  return activation(UnaryOp::kRelu, BinaryOp::kReluGrad, "ReluBackward", a, true);
}
Tensor tanh(const Tensor& a) {
  return activation(UnaryOp::kTanh, BinaryOp::kTanhGrad, "TanhBackward", a, true);
}
Tensor sigmoid(const Tensor& a) {
  return activation(UnaryOp::kSigmoid, BinaryOp::kSigmoidGrad, "SigmoidBackward", a, true);
}
Tensor silu(const Tensor& a) {
  return activation(UnaryOp::kSilu, BinaryOp::kSiluGrad, "SiluBackward", a, false);
}
Tensor gelu(const Tensor& a, const std::string& approximate) {
  if (approximate == "tanh")
    return activation(UnaryOp::kGeluTanh, BinaryOp::kGeluTanhGrad, "GeluBackward", a, false);
  COHORT_CHECK(approximate == "none", "gelu: approximate must be 'none' or 'tanh', got '",
               approximate, "'");
  return activation(UnaryOp::kGeluErf, BinaryOp::kGeluErfGrad, "GeluBackward", a, false);
}

Tensor eq(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kEq, a, b, "eq", {}, true);
}
Tensor ne(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kNe, a, b, "ne", {}, true);
}
Tensor lt(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kLt, a, b, "lt", {}, true);
}
Tensor le(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kLe, a, b, "le", {}, true);
}
Tensor gt(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kGt, a, b, "gt", {}, true);
}
Tensor ge(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kGe, a, b, "ge", {}, true);
}
Tensor gt(const Tensor& a, double s) { return gt(a, scalar_tensor(s, a.options())); }
Tensor lt(const Tensor& a, double s) { return lt(a, scalar_tensor(s, a.options())); }
Tensor eq(const Tensor& a, double s) { return eq(a, scalar_tensor(s, a.options())); }

Tensor logical_not(const Tensor& a) {
  Tensor out = empty(a.sizes(), a.options().with_dtype(DType::kBool));
  be(a).unary(UnaryOp::kNot, a.to(DType::kBool), out, {});
  return out;
}
Tensor logical_and(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kAnd, a.to(DType::kBool), b.to(DType::kBool), "logical_and", {},
                        true);
}
Tensor logical_or(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::kOr, a.to(DType::kBool), b.to(DType::kBool), "logical_or", {},
                        true);
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_pair(a, b, "where");
  COHORT_CHECK(cond.dtype() == DType::kBool, "where: condition must be a bool tensor, got ",
               dtype_name(cond.dtype()));
  Tensor out;
  {
    autograd::NoGradGuard guard;
    DType t = promote_types(a.dtype(), b.dtype());
    Shape shape = broadcast_shapes(cond.sizes(), broadcast_shapes(a.sizes(), b.sizes()));
    out = empty(shape, a.options().with_dtype(t));
    be(a).where(cond, a.to(t), b.to(t), out);
  }
  if (autograd::any_requires_grad({&a, &b})) {
    SavedTensor sc(cond);
    Shape sha = a.sizes(), shb = b.sizes();
    autograd::record("WhereBackward", {a, b}, {&out}, [=](const TensorList& g, const Needs& n) {
      Tensor z = zeros_like(g[0]);
      return TensorList{n[0] ? sum_to(where(sc.get(), g[0], z), sha) : Tensor(),
                        n[1] ? sum_to(where(sc.get(), z, g[0]), shb) : Tensor()};
    });
  }
  return out;
}

Tensor masked_fill(const Tensor& a, const Tensor& mask, double value) {
  return where(mask, scalar_tensor(value, a.options()), a);
}

// --- in-place
// ----------------------------------------------------------------------------------------
namespace {
void check_inplace(const Tensor& a, const char* op) {
  COHORT_CHECK(!(autograd::GradMode::is_enabled() && (a.requires_grad() || a.grad_fn())), op,
               " on a tensor that requires grad would corrupt autograd; do it under NoGradGuard "
               "or on a detached tensor");
}
void inplace_binary(BinaryOp op, Tensor& a, const Tensor& b, const char* name) {
  check_inplace(a, name);
  check_pair(a, b, name);
  Tensor y = b.dtype() == a.dtype() ? b : b.to(a.dtype());
  be(a).binary(op, a, y, a, {});
  a.bump_version();
}
}  // namespace

Tensor& add_(Tensor& a, const Tensor& b, double alpha) {
  if (alpha == 1.0) {
    inplace_binary(BinaryOp::kAdd, a, b, "add_");
  } else {
    autograd::NoGradGuard g;
    inplace_binary(BinaryOp::kAdd, a, mul(b, alpha), "add_");
  }
  return a;
}

Tensor& mul_(Tensor& a, double s) {
  check_inplace(a, "mul_");
  be(a).unary(UnaryOp::kAffine, a, a, {s, 0});
  a.bump_version();
  return a;
}

Tensor& mul_(Tensor& a, const Tensor& b) {
  inplace_binary(BinaryOp::kMul, a, b, "mul_");
  return a;
}

Tensor& addcmul_(Tensor& a, const Tensor& b, const Tensor& c, double value) {
  autograd::NoGradGuard g;
  return add_(a, mul(b, c), value);
}

Tensor& addcdiv_(Tensor& a, const Tensor& b, const Tensor& c, double value) {
  autograd::NoGradGuard g;
  return add_(a, div(b, c), value);
}

Tensor& lerp_(Tensor& a, const Tensor& b, double weight) {
  autograd::NoGradGuard g;
  Tensor d = sub(b, a);
  return add_(a, d, weight);
}

Tensor& clamp_(Tensor& a, std::optional<double> lo, std::optional<double> hi) {
  check_inplace(a, "clamp_");
  be(a).unary(UnaryOp::kClamp, a, a, {lo.value_or(-INFINITY), hi.value_or(INFINITY)});
  a.bump_version();
  return a;
}

Tensor& masked_fill_(Tensor& a, const Tensor& mask, double value) {
  check_inplace(a, "masked_fill_");
  be(a).where(mask, scalar_tensor(value, a.options()), a, a);
  a.bump_version();
  return a;
}

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.sizes() != b.sizes()) return false;
  autograd::NoGradGuard g;
  Tensor x = a.to(Device::cpu()).to(DType::kFloat64).contiguous();
  Tensor y = b.to(Device::cpu()).to(DType::kFloat64).contiguous();
  const double* px = x.data_ptr<double>();
  const double* py = y.data_ptr<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (std::isnan(px[i]) != std::isnan(py[i])) return false;
    if (!std::isnan(px[i]) && std::abs(px[i] - py[i]) > atol + rtol * std::abs(py[i])) return false;
  }
  return true;
}

}  // namespace cohort::core
