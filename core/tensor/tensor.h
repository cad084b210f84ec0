// Tensor: a strided view (sizes, strides, offset) of a shared Storage, with a dtype, a device and,
// when it takes part in autograd, an AutogradMeta (grad, grad_fn, hooks). Copying a Tensor copies a
// handle; views share storage and its version counter. Up to kMaxDims dimensions.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor/device.h"
#include "core/tensor/dtype.h"
#include "core/tensor/storage.h"

namespace cohort::core {

namespace autograd {
class Node;
}

inline constexpr int kMaxDims = 8;
using Shape = std::vector<int64_t>;

struct TensorOptions {
  DType dtype = DType::kFloat32;
  Device device = Device::cpu();
  bool requires_grad = false;

  TensorOptions() = default;
  TensorOptions(DType d) : dtype(d) {}  // NOLINT(google-explicit-constructor): zeros({2}, kInt64)
  TensorOptions with_dtype(DType d) const {
    auto o = *this;
    o.dtype = d;
    return o;
  }
  TensorOptions with_device(Device d) const {
    auto o = *this;
    o.device = d;
    return o;
  }
  TensorOptions with_requires_grad(bool r) const {
    auto o = *this;
    o.requires_grad = r;
    return o;
  }
};

class Tensor;
struct AutogradMeta;

class TensorImpl {
 public:
  TensorImpl(Storage storage, Shape sizes, Shape strides, int64_t offset, DType dtype);
  ~TensorImpl();

  Storage storage;
  Shape sizes;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype;
  std::unique_ptr<AutogradMeta> autograd;  // null until the tensor takes part in autograd
};

using TensorHook = std::function<class Tensor(const class Tensor&)>;
using PostAccumulateHook = std::function<void(class Tensor&)>;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  // --- metadata
  // -------------------------------------------------------------------------------------
  const Shape& sizes() const { return impl_->sizes; }
  const Shape& shape() const { return impl_->sizes; }
  const Shape& strides() const { return impl_->strides; }
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t dim() const { return static_cast<int64_t>(impl_->sizes.size()); }
  int64_t numel() const;
  int64_t offset() const { return impl_->offset; }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device(); }
  TensorOptions options() const { return TensorOptions(dtype()).with_device(device()); }
  size_t element_size() const { return core::element_size(dtype()); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  const Storage& storage() const { return impl_->storage; }
  uint64_t version() const { return impl_->storage->version(); }
  void bump_version() const { impl_->storage->bump_version(); }

  // Raw pointer to the first element (storage base + offset). CPU pointers may be dereferenced.
  void* raw_data() const;
  template <typename T>
  T* data_ptr() const {
    COHORT_CHECK(dtype_of<T>() == dtype(), "data_ptr<", dtype_name(dtype_of<T>()),
                 "> on a tensor of dtype ", dtype_name(dtype()));
    return static_cast<T*>(raw_data());
  }
  // The single element of a one-element tensor, converted to T (copies from the device if needed).
  template <typename T>
  T item() const;
  double item_double() const;

  // --- views (share storage; differentiable)
  // -------------------------------------------------------
  Tensor view(Shape shape) const;
  Tensor reshape(Shape shape) const;  // a view when strides allow, else a copy
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor permute(Shape dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const {
    return slice(dim, start, start + length);
  }
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(Shape shape) const;
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor contiguous() const;

  // --- conversions
  // -----------------------------------------------------------------------------------
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;
  Tensor clone() const;
  // Copies src (broadcast to this shape, converted to this dtype) into this tensor in place.
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  // Makes this tensor a view of source's memory (PyTorch's set_): its storage, offset, sizes and
  // strides, keeping this tensor's identity and autograd state. Every handle to this tensor sees
  // the new memory; the version counter is now source's storage's (and is bumped). Same dtype; not
  // under autograd on a tensor that requires grad.
  Tensor& set_(const Tensor& source);

  // --- autograd
  // -------------------------------------------------------------------------------------
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r);
  Tensor& requires_grad_(bool r = true) { return set_requires_grad(r); }
  bool is_leaf() const;
  // The accumulated gradient of a leaf; undefined until a backward pass reaches it.
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  uint32_t output_nr() const;
  // Backward from this tensor. Without `gradient` it must hold a single element. Blocks until done.
  // Throws if the graph was already freed by an earlier backward without retain_graph.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  // A tensor that shares storage (and version counter) but is cut from the graph.
  Tensor detach() const;
  // hook(grad) runs when this tensor's gradient has been computed; a defined return value replaces
  // the gradient. Returns a handle for remove_hook.
  int register_hook(TensorHook hook) const;
  void remove_hook(int handle) const;
  // Leaf only: hook(param) runs after a backward pass has accumulated into param.grad().
  int register_post_accumulate_grad_hook(PostAccumulateHook hook) const;

  std::string str() const;  // readable printing, like PyTorch's repr

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::string shape_str(const Shape& s);

// Contiguous row-major strides for a shape.
Shape contiguous_strides(const Shape& sizes);
int64_t shape_numel(const Shape& sizes);
// Wraps a possibly negative dim into [0, ndim); throws naming the op when out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim);

// A fresh, uninitialised, contiguous tensor.
Tensor empty(const Shape& sizes, TensorOptions opts = {});

}  // namespace cohort::core
