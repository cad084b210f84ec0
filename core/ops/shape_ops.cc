// Joining, splitting and indexing: cat, stack, split, chunk, index_select, gather.
#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/backend.h"
#include "core/ops/ops.h"

namespace cohort::core {

using autograd::SavedTensor;
using autograd::TensorList;
using Needs = std::vector<bool>;

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  COHORT_CHECK(!tensors.empty(), "cat: needs at least one tensor");
  const Tensor& first = tensors[0];
  dim = wrap_dim(dim, first.dim());
  Shape shape = first.sizes();
  shape[dim] = 0;
  std::vector<int64_t> offsets;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    COHORT_CHECK(
        t.dim() == first.dim() && t.dtype() == first.dtype() && t.device() == first.device(),
        "cat: tensor ", i, " (", shape_str(t.sizes()), ", ", dtype_name(t.dtype()),
        ") does not match tensor 0 (", shape_str(first.sizes()), ", ", dtype_name(first.dtype()),
        ")");
    for (int64_t d = 0; d < t.dim(); ++d) {
      COHORT_CHECK(d == dim || t.size(d) == first.size(d), "cat: tensor ", i, " has shape ",
                   shape_str(t.sizes()), " but tensor 0 has ", shape_str(first.sizes()),
                   " outside dimension ", dim);
    }
    offsets.push_back(shape[dim]);
    shape[dim] += t.size(dim);
  }
  Tensor out = empty(shape, first.options());
  {
    autograd::NoGradGuard g;
    for (size_t i = 0; i < tensors.size(); ++i) {
      backend_for(out.device())
          .copy(tensors[i], out.slice(dim, offsets[i], offsets[i] + tensors[i].size(dim)));
    }
  }
  if (autograd::any_requires_grad(tensors)) {
    std::vector<int64_t> lens;
    for (auto& t : tensors) lens.push_back(t.size(dim));
    autograd::record("CatBackward", tensors, {&out}, [=](const TensorList& g, const Needs& n) {
      TensorList r(lens.size());
      for (size_t i = 0; i < lens.size(); ++i)
        if (n[i]) r[i] = g[0].slice(dim, offsets[i], offsets[i] + lens[i]);
      return r;
    });
  }
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  COHORT_CHECK(!tensors.empty(), "stack: needs at least one tensor");
  dim = wrap_dim(dim, tensors[0].dim() + 1);
  std::vector<Tensor> us;
  for (size_t i = 0; i < tensors.size(); ++i) {
    COHORT_CHECK(tensors[i].sizes() == tensors[0].sizes(), "stack: tensor ", i, " has shape ",
                 shape_str(tensors[i].sizes()), " but tensor 0 has ",
                 shape_str(tensors[0].sizes()));
    us.push_back(tensors[i].unsqueeze(dim));
  }
  return cat(us, dim);
}

std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim) {
  COHORT_CHECK(split_size > 0, "split: split_size must be positive, got ", split_size);
  dim = wrap_dim(dim, t.dim());
  std::vector<Tensor> out;
  for (int64_t s = 0; s < t.size(dim); s += split_size)
    out.push_back(t.slice(dim, s, std::min(s + split_size, t.size(dim))));
  if (out.empty()) out.push_back(t);
  return out;
}

std::vector<Tensor> chunk(const Tensor& t, int64_t chunks, int64_t dim) {
  COHORT_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  int64_t n = t.size(wrap_dim(dim, t.dim()));
  return split(t, std::max<int64_t>(1, (n + chunks - 1) / chunks), dim);
}

Tensor index_select(const Tensor& t, int64_t dim, const Tensor& index) {
  COHORT_CHECK(index.dim() <= 1, "index_select: index must be 1-D, got ", shape_str(index.sizes()));
  dim = wrap_dim(dim, t.dim());
  Tensor idx = index.to(DType::kInt64).contiguous().reshape({-1});
  Tensor x = t.contiguous();
  Shape shape = x.sizes();
  shape[dim] = idx.numel();
  Tensor out = empty(shape, x.options());
  backend_for(x.device()).index_select(x.detach(), dim, idx, out);
  if (autograd::any_requires_grad({&x})) {
    SavedTensor si(idx);
    Shape in_shape = x.sizes();
    autograd::record("IndexSelectBackward", {x}, {&out}, [=](const TensorList& g, const Needs&) {
      Tensor gi = zeros(in_shape, g[0].options());
      backend_for(gi.device()).index_add(gi, dim, si.get(), g[0].contiguous());
      return TensorList{gi};
    });
  }
  return out;
}

Tensor gather(const Tensor& t, int64_t dim, const Tensor& index) {
  COHORT_CHECK(index.dim() == t.dim(), "gather: index has ", index.dim(), " dimensions, input has ",
               t.dim());
  dim = wrap_dim(dim, t.dim());
  Tensor idx = index.to(DType::kInt64).contiguous();
  Tensor x = t.contiguous();
  Tensor out = empty(idx.sizes(), x.options());
  backend_for(x.device()).gather(x.detach(), dim, idx, out);
  if (autograd::any_requires_grad({&x})) {
    SavedTensor si(idx);
    Shape in_shape = x.sizes();
    autograd::record("GatherBackward", {x}, {&out}, [=](const TensorList& g, const Needs&) {
      Tensor gi = zeros(in_shape, g[0].options());
      backend_for(gi.device()).scatter_add(gi, dim, si.get(), g[0].contiguous());
      return TensorList{gi};
    });
  }
  return out;
}

}  // namespace cohort::core
