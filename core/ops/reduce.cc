// Reduction front ends (sum, mean, var, max/min, argmax) and sum_to, the inverse of broadcasting.
#include <algorithm>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/backend.h"
#include "core/ops/ops.h"

namespace cohort::core {

using autograd::SavedTensor;
using autograd::TensorList;
using Needs = std::vector<bool>;

namespace {

// Normalises `dims` (empty = all) into a sorted mask over a's dims.
std::vector<bool> dim_mask(const Tensor& a, const Shape& dims) {
  std::vector<bool> mask(a.dim(), dims.empty());
  for (int64_t d : dims) {
    int64_t w = wrap_dim(d, a.dim());
    COHORT_CHECK(!mask[w] || dims.empty(), "reduction: dimension ", d, " appears twice");
    mask[w] = true;
  }
  return mask;
}

Shape kept_shape(const Tensor& a, const std::vector<bool>& mask) {
  Shape s = a.sizes();
  for (size_t i = 0; i < s.size(); ++i)
    if (mask[i]) s[i] = 1;
  return s;
}

Shape squeezed_shape(const Tensor& a, const std::vector<bool>& mask) {
  Shape s;
  for (size_t i = 0; i < mask.size(); ++i)
    if (!mask[i]) s.push_back(a.size(static_cast<int64_t>(i)));
  return s;
}

Tensor reduce_forward(ReduceOp op, const Tensor& a, const std::vector<bool>& mask, bool keepdim,
                      DType out_dtype) {
  autograd::NoGradGuard g;
  Tensor x = a.dtype() == out_dtype ? a : a.to(out_dtype);
  Tensor out = empty(kept_shape(a, mask), x.options());
  backend_for(a.device()).reduce(op, x, out, Tensor(), -1);
  return keepdim ? out : out.view(squeezed_shape(a, mask));
}

DType sum_dtype(DType t) { return is_floating(t) ? t : DType::kInt64; }

}  // namespace

Tensor sum(const Tensor& a, const Shape& dims, bool keepdim) {
  auto mask = dim_mask(a, dims);
  Tensor out = reduce_forward(ReduceOp::kSum, a, mask, keepdim, sum_dtype(a.dtype()));
  if (autograd::any_requires_grad({&a})) {
    Shape keep = kept_shape(a, mask), in_shape = a.sizes();
    autograd::record("SumBackward", {a}, {&out},
                     [keep, in_shape](const TensorList& g, const Needs&) {
                       return TensorList{g[0].reshape(keep).expand(in_shape)};
                     });
  }
  return out;
}

Tensor sum(const Tensor& a) { return sum(a, {}, false); }

Tensor mean(const Tensor& a, const Shape& dims, bool keepdim) {
  COHORT_CHECK(is_floating(a.dtype()), "mean needs a floating-point tensor, got ",
               dtype_name(a.dtype()));
  auto mask = dim_mask(a, dims);
  int64_t count = 1;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) count *= a.size(static_cast<int64_t>(i));
  return mul(sum(a, dims, keepdim), 1.0 / static_cast<double>(std::max<int64_t>(count, 1)));
}

Tensor mean(const Tensor& a) { return mean(a, {}, false); }

Tensor var(const Tensor& a, const Shape& dims, int64_t correction, bool keepdim) {
  auto mask = dim_mask(a, dims);
  int64_t count = 1;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) count *= a.size(static_cast<int64_t>(i));
  Tensor centered = sub(a, mean(a, dims, true));
  double denom = static_cast<double>(std::max<int64_t>(count - correction, 0));
  return div(sum(square(centered), dims, keepdim), denom);
}

namespace {
Tensor full_extremum(ReduceOp op, const Tensor& a, const char* name) {
  COHORT_CHECK(a.numel() > 0, name, ": cannot reduce an empty tensor");
  std::vector<bool> mask(a.dim(), true);
  Tensor out = reduce_forward(op, a, mask, false, a.dtype());
  if (autograd::any_requires_grad({&a})) {
    SavedTensor sa(a), so(out);
    autograd::record(name, {a}, {&out}, [sa, so](const TensorList& g, const Needs&) {
      // Ties share the gradient evenly.
      Tensor hit = eq(sa.get(), so.get()).to(g[0].dtype());
      return TensorList{mul(hit, div(g[0], sum(hit)))};
    });
  }
  return out;
}

std::pair<Tensor, Tensor> dim_extremum(ReduceOp op, const Tensor& a, int64_t dim, bool keepdim,
                                       const char* name) {
  dim = wrap_dim(dim, a.dim());
  COHORT_CHECK(a.dim() == 0 || a.size(dim) > 0, name, ": cannot reduce an empty dimension");
  Tensor x = a.contiguous();
  Shape keep = a.sizes();
  if (a.dim()) keep[dim] = 1;
  Tensor values = empty(keep, a.options());
  Tensor indices = empty(keep, a.options().with_dtype(DType::kInt64));
  backend_for(a.device()).reduce(op, x.detach(), values, indices, a.dim() ? dim : 0);
  if (autograd::any_requires_grad({&a})) {
    Shape in_shape = a.sizes();
    SavedTensor si(indices);
    autograd::record(name, {a}, {&values}, [=](const TensorList& g, const Needs&) {
      Tensor gi = zeros(in_shape, g[0].options());
      backend_for(gi.device()).scatter_add(gi, dim, si.get(), g[0].contiguous());
      return TensorList{gi};
    });
  }
  if (!keepdim && a.dim()) {
    values = values.squeeze(dim);
    indices = indices.squeeze(dim);
  }
  return {values, indices};
}
}  // namespace

Tensor max(const Tensor& a) { return full_extremum(ReduceOp::kMax, a, "MaxBackward"); }
Tensor min(const Tensor& a) { return full_extremum(ReduceOp::kMin, a, "MinBackward"); }
std::pair<Tensor, Tensor> max(const Tensor& a, int64_t dim, bool keepdim) {
  return dim_extremum(ReduceOp::kMax, a, dim, keepdim, "MaxDimBackward");
}
std::pair<Tensor, Tensor> min(const Tensor& a, int64_t dim, bool keepdim) {
  return dim_extremum(ReduceOp::kMin, a, dim, keepdim, "MinDimBackward");
}

Tensor argmax(const Tensor& a, int64_t dim, bool keepdim) {
  autograd::NoGradGuard g;
  return max(a, dim, keepdim).second;
}

Tensor argmax(const Tensor& a) {
  autograd::NoGradGuard g;
  return max(a.reshape({-1}), 0, false).second;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.sizes() == shape) return g;
  COHORT_CHECK(g.dim() >= static_cast<int64_t>(shape.size()), "sum_to: cannot reduce ",
               shape_str(g.sizes()), " to ", shape_str(shape));
  size_t lead = g.sizes().size() - shape.size();
  Shape dims;
  for (size_t i = 0; i < g.sizes().size(); ++i) {
    if (i < lead || (shape[i - lead] == 1 && g.sizes()[i] != 1))
      dims.push_back(static_cast<int64_t>(i));
  }
  Tensor r = dims.empty() ? g : sum(g, dims, true);
  return r.reshape(shape);
}

}  // namespace cohort::core
