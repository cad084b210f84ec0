// Tensor metadata, views and conversions. Views share storage; in grad mode each view records a
// backward node so that gradients flow back through reshapes, slices and permutations.
#include "core/tensor/tensor.h"

#include "core/tensor/cuda/cuda_device.h"

#include <algorithm>
#include <numeric>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/backend.h"
#include "core/ops/ops.h"

namespace cohort::core {

TensorImpl::TensorImpl(Storage s, Shape sz, Shape st, int64_t off, DType dt)
    : storage(std::move(s)), sizes(std::move(sz)), strides(std::move(st)), offset(off), dtype(dt) {
  COHORT_CHECK(sizes.size() <= static_cast<size_t>(kMaxDims), "tensors have at most ", kMaxDims,
               " dimensions, got ", sizes.size());
}
TensorImpl::~TensorImpl() = default;

Shape contiguous_strides(const Shape& sizes) {
  Shape st(sizes.size());
  int64_t acc = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(sizes[i], 1);
  }
  return st;
}

int64_t shape_numel(const Shape& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t wrap_dim(int64_t dim, int64_t ndim) {
  int64_t n = std::max<int64_t>(ndim, 1);
  COHORT_CHECK(dim >= -n && dim < n, "dimension ", dim, " is out of range for a tensor with ", ndim,
               " dimensions");
  return dim < 0 ? dim + n : dim;
}

Tensor empty(const Shape& sizes, TensorOptions opts) {
  for (int64_t s : sizes) COHORT_CHECK(s >= 0, "negative size in shape ", shape_str(sizes));
  size_t nbytes = static_cast<size_t>(shape_numel(sizes)) * element_size(opts.dtype);
  auto storage = std::make_shared<StorageImpl>(nbytes, opts.device);
  Tensor t(std::make_shared<TensorImpl>(std::move(storage), sizes, contiguous_strides(sizes), 0,
                                        opts.dtype));
  if (opts.requires_grad) t.set_requires_grad(true);
  return t;
}

int64_t Tensor::size(int64_t d) const { return impl_->sizes[wrap_dim(d, dim())]; }
int64_t Tensor::stride(int64_t d) const { return impl_->strides[wrap_dim(d, dim())]; }
int64_t Tensor::numel() const { return shape_numel(impl_->sizes); }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = impl_->sizes.size(); i-- > 0;) {
    if (impl_->sizes[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->sizes[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  auto* base = static_cast<char*>(impl_->storage->data());
  if (!base) {
    if (impl_->storage->released() && numel() > 0)
      COHORT_THROW(ReleasedMemoryError, "a tensor of shape ", shape_str(sizes()),
                   " was read after its memory was released: a parameter of an FSDP unit used "
                   "outside that unit's forward (weights tied across units, or a module calling "
                   "a child's forward() directly instead of through operator())");
    return nullptr;
  }
  return base + impl_->offset * static_cast<int64_t>(element_size());
}

double Tensor::item_double() const {
  COHORT_CHECK(numel() == 1, "item() needs a tensor with one element, got shape ",
               shape_str(sizes()));
  Tensor c = device().is_cpu() ? *this : to(Device::cpu());
  return dispatch_all(c.dtype(), [&](auto tag) -> double {
    using T = typename decltype(tag)::type;
    const T v = *static_cast<const T*>(c.raw_data());
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Float16>) {
      return static_cast<double>(static_cast<float>(v));
    } else {
      return static_cast<double>(v);
    }
  });
}

template <typename T>
T Tensor::item() const {
  if constexpr (std::is_same_v<T, double>) {
    return item_double();
  } else if constexpr (std::is_integral_v<T>) {
    Tensor c = device().is_cpu() ? *this : to(Device::cpu());
    COHORT_CHECK(numel() == 1, "item() needs a tensor with one element, got shape ",
                 shape_str(sizes()));
    return dispatch_all(c.dtype(), [&](auto tag) -> T {
      using U = typename decltype(tag)::type;
      const U v = *static_cast<const U*>(c.raw_data());
      if constexpr (std::is_same_v<U, BFloat16> || std::is_same_v<U, Float16>) {
        return static_cast<T>(static_cast<float>(v));
      } else {
        return static_cast<T>(v);
      }
    });
  } else {
    return static_cast<T>(item_double());
  }
}
template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int64_t Tensor::item<int64_t>() const;
template int32_t Tensor::item<int32_t>() const;
template bool Tensor::item<bool>() const;

// --- views
// -------------------------------------------------------------------------------------------
namespace {

Tensor make_view(const Tensor& self, Shape sizes, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>(self.storage(), std::move(sizes), std::move(strides),
                                           offset, self.dtype());
  return Tensor(std::move(impl));
}

// Records a view's backward, mapping the output gradient to the input's shape.
void record_view(const char* name, const Tensor& self, Tensor& out,
                 std::function<Tensor(const Tensor&)> back) {
  if (!autograd::any_requires_grad({&self})) return;
  autograd::record(name, {self}, {&out},
                   [back = std::move(back)](const autograd::TensorList& g, const std::vector<bool>&)
                       -> autograd::TensorList { return {back(g[0])}; });
}

// Strides for viewing a tensor with (sizes, strides) as `shape` without copying, if possible.
bool compute_view_strides(const Shape& old_sizes, const Shape& old_strides, const Shape& shape,
                          Shape& out) {
  int64_t numel = shape_numel(old_sizes);
  out.assign(shape.size(), 0);
  if (numel == 0 || old_sizes.empty()) {
    out = contiguous_strides(shape);
    return true;
  }
  // Walk chunks of old dims that are mutually contiguous, matching them to new dims (as PyTorch
  // does).
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(old_sizes.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_sizes[d];
    if (d == 0 ||
        (old_sizes[d - 1] != 1 && old_strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = old_strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Shape infer_shape(Shape shape, int64_t numel) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      COHORT_CHECK(infer < 0, "only one dimension can be -1 in shape ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      COHORT_CHECK(shape[i] >= 0, "invalid size ", shape[i], " in shape ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    COHORT_CHECK(known != 0 && numel % known == 0, "shape ", shape_str(shape),
                 " is invalid for a tensor of ", numel, " elements");
    shape[infer] = numel / known;
  }
  COHORT_CHECK(shape_numel(shape) == numel, "shape ", shape_str(shape),
               " is invalid for a tensor of ", numel, " elements");
  return shape;
}

}  // namespace

Tensor Tensor::view(Shape shape) const {
  shape = infer_shape(std::move(shape), numel());
  Shape st;
  COHORT_CHECK(compute_view_strides(sizes(), strides(), shape, st), "view ", shape_str(shape),
               " is not compatible with the strides of a ", shape_str(sizes()),
               " tensor; use reshape() instead");
  Tensor out = make_view(*this, shape, st, offset());
  Shape in_shape = sizes();
  record_view("ViewBackward", *this, out,
              [in_shape](const Tensor& g) { return g.reshape(in_shape); });
  return out;
}

Tensor Tensor::reshape(Shape shape) const {
  shape = infer_shape(std::move(shape), numel());
  Shape st;
  if (compute_view_strides(sizes(), strides(), shape, st)) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  start = wrap_dim(start, dim());
  end = wrap_dim(end, dim());
  Shape s;
  for (int64_t i = 0; i < start; ++i) s.push_back(size(i));
  int64_t m = 1;
  for (int64_t i = start; i <= end; ++i) m *= size(i);
  s.push_back(m);
  for (int64_t i = end + 1; i < dim(); ++i) s.push_back(size(i));
  return reshape(s);
}

Tensor Tensor::permute(Shape dims) const {
  COHORT_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute needs ", dim(),
               " dimensions, got ", shape_str(dims));
  Shape sz(dims.size()), st(dims.size()), inverse(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], dim());
    COHORT_CHECK(!seen[d], "permute: dimension ", d, " repeats in ", shape_str(dims));
    seen[d] = true;
    sz[i] = size(d);
    st[i] = stride(d);
    inverse[d] = static_cast<int64_t>(i);
  }
  Tensor out = make_view(*this, sz, st, offset());
  record_view("PermuteBackward", *this, out,
              [inverse](const Tensor& g) { return g.permute(inverse); });
  return out;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  Shape dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  if (dim() == 0) return *this;
  std::swap(dims[wrap_dim(d0, dim())], dims[wrap_dim(d1, dim())]);
  return permute(dims);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim());
  COHORT_CHECK(step > 0, "slice step must be positive, got ", step);
  int64_t n = size(d);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape sz = sizes(), st = strides();
  sz[d] = (end - start + step - 1) / step;
  st[d] *= step;
  Tensor out = make_view(*this, sz, st, offset() + start * stride(d));
  Shape in_shape = sizes();
  DType dt = dtype();
  Device dev = device();
  record_view("SliceBackward", *this, out, [=](const Tensor& g) {
    Tensor z = zeros(in_shape, TensorOptions(dt).with_device(dev));
    z.slice(d, start, end, step).copy_(g);
    return z;
  });
  return out;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim());
  int64_t n = size(d);
  COHORT_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dimension ",
               d, " of size ", n);
  if (index < 0) index += n;
  Shape sz = sizes(), st = strides();
  sz.erase(sz.begin() + d);
  st.erase(st.begin() + d);
  Tensor out = make_view(*this, sz, st, offset() + index * stride(d));
  Shape in_shape = sizes();
  DType dt = dtype();
  Device dev = device();
  record_view("SelectBackward", *this, out, [=](const Tensor& g) {
    Tensor z = zeros(in_shape, TensorOptions(dt).with_device(dev));
    z.select(d, index).copy_(g);
    return z;
  });
  return out;
}

Tensor Tensor::expand(Shape shape) const {
  COHORT_CHECK(static_cast<int64_t>(shape.size()) >= dim(), "expand: target shape ",
               shape_str(shape), " has fewer dimensions than ", shape_str(sizes()));
  size_t lead = shape.size() - sizes().size();
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      COHORT_CHECK(shape[i] >= 0, "expand: invalid size -1 in a new leading dimension");
      continue;
    }
    int64_t s = sizes()[i - lead];
    if (shape[i] == -1) shape[i] = s;
    if (s == shape[i]) {
      st[i] = strides()[i - lead];
    } else {
      COHORT_CHECK(s == 1, "expand: size ", s, " at dimension ", i - lead, " cannot expand to ",
                   shape[i], " (", shape_str(sizes()), " -> ", shape_str(shape), ")");
    }
  }
  if (shape == sizes()) return *this;
  Tensor out = make_view(*this, shape, st, offset());
  Shape in_shape = sizes();
  record_view("ExpandBackward", *this, out,
              [in_shape](const Tensor& g) { return sum_to(g, in_shape); });
  return out;
}

Tensor Tensor::squeeze() const {
  Shape s;
  for (int64_t x : sizes())
    if (x != 1) s.push_back(x);
  return s.size() == sizes().size() ? *this : reshape(s);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim());
  if (size(d) != 1) return *this;
  Shape s = sizes();
  s.erase(s.begin() + d);
  return view(s);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1);
  Shape s = sizes();
  s.insert(s.begin() + d, 1);
  return view(s);
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

// --- conversions
// -------------------------------------------------------------------------------------
Tensor Tensor::clone() const {
  Tensor out = empty(sizes(), options());
  backend_for(device()).copy(*this, out);
  if (autograd::any_requires_grad({this})) {
    autograd::record("CloneBackward", {*this}, {&out},
                     [](const autograd::TensorList& g,
                        const std::vector<bool>&) -> autograd::TensorList { return {g[0]}; });
  }
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype()) return *this;
  Tensor out = empty(sizes(), options().with_dtype(dt));
  backend_for(device()).copy(*this, out);
  if (is_floating(dt) && autograd::any_requires_grad({this})) {
    DType src = dtype();
    autograd::record(
        "ToDTypeBackward", {*this}, {&out},
        [src](const autograd::TensorList& g, const std::vector<bool>&) -> autograd::TensorList {
          return {g[0].to(src)};
        });
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(sizes(), options().with_device(dev));
  cuda::copy_bytes(out.raw_data(), dev, src.raw_data(), src.device(), src.nbytes());
  if (autograd::any_requires_grad({this})) {
    Device from = device();
    autograd::record(
        "ToDeviceBackward", {*this}, {&out},
        [from](const autograd::TensorList& g, const std::vector<bool>&) -> autograd::TensorList {
          return {g[0].to(from)};
        });
  }
  return out;
}

Tensor& Tensor::copy_(const Tensor& src) {
  COHORT_CHECK(!(autograd::GradMode::is_enabled() && requires_grad()),
               "copy_ into a tensor that requires grad; wrap it in NoGradGuard");
  // Broadcast check happens in the kernel's stride computation.
  Backend& b = backend_for(device().is_cpu() ? src.device() : device());
  b.copy(src, *this);
  bump_version();
  return *this;
}

Tensor& Tensor::set_(const Tensor& source) {
  COHORT_CHECK(!(autograd::GradMode::is_enabled() && requires_grad()),
               "set_ on a tensor that requires grad; wrap it in NoGradGuard");
  COHORT_CHECK(source.dtype() == dtype(), "set_: source is ", dtype_name(source.dtype()),
               ", this tensor ", dtype_name(dtype()));
  impl_->storage = source.storage();
  impl_->sizes = source.sizes();
  impl_->strides = source.strides();
  impl_->offset = source.offset();
  bump_version();  // a tensor saved for backward before now no longer holds what it did
  return *this;
}

Tensor& Tensor::fill_(double value) {
  COHORT_CHECK(!(autograd::GradMode::is_enabled() && requires_grad()),
               "fill_ on a tensor that requires grad; wrap it in NoGradGuard");
  backend_for(device()).fill(*this, value);
  bump_version();
  return *this;
}

// --- autograd accessors
// ------------------------------------------------------------------------------
bool Tensor::requires_grad() const { return impl_->autograd && impl_->autograd->requires_grad; }

Tensor& Tensor::set_requires_grad(bool r) {
  COHORT_CHECK(!r || is_floating(dtype()), "only floating-point tensors can require grad, got ",
               dtype_name(dtype()));
  COHORT_CHECK(is_leaf(), "requires_grad can only be changed on leaf tensors; use detach()");
  autograd::meta(*this).requires_grad = r;
  return *this;
}

bool Tensor::is_leaf() const { return !impl_->autograd || !impl_->autograd->grad_fn; }

Tensor Tensor::grad() const { return impl_->autograd ? impl_->autograd->grad : Tensor(); }

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined()) {
    COHORT_CHECK(g.sizes() == sizes(), "assigned grad has shape ", shape_str(g.sizes()),
                 " but the tensor has shape ", shape_str(sizes()));
  }
  autograd::meta(*this).grad = g;
}

const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<autograd::Node> kNone;
  return impl_->autograd ? impl_->autograd->grad_fn : kNone;
}

uint32_t Tensor::output_nr() const { return impl_->autograd ? impl_->autograd->output_nr : 0; }

Tensor Tensor::detach() const {
  return Tensor(std::make_shared<TensorImpl>(storage(), sizes(), strides(), offset(), dtype()));
}

namespace {
int next_hook_id() {
  static std::atomic<int> id{1};
  return id++;
}
}  // namespace

int Tensor::register_hook(TensorHook hook) const {
  COHORT_CHECK(requires_grad() || grad_fn(),
               "cannot register a hook on a tensor that does not require grad");
  int id = next_hook_id();
  if (grad_fn()) {
    grad_fn()->add_pre_hook(output_nr(), id, std::move(hook));
  } else {
    autograd::meta(*this).hooks.emplace_back(id, std::move(hook));
  }
  return id;
}

void Tensor::remove_hook(int handle) const {
  if (grad_fn() && grad_fn()->remove_pre_hook(handle)) return;
  if (!impl_->autograd) return;
  auto& h = impl_->autograd->hooks;
  h.erase(std::remove_if(h.begin(), h.end(), [&](auto& p) { return p.first == handle; }), h.end());
  auto& ph = impl_->autograd->post_hooks;
  ph.erase(std::remove_if(ph.begin(), ph.end(), [&](auto& p) { return p.first == handle; }),
           ph.end());
}

int Tensor::register_post_accumulate_grad_hook(PostAccumulateHook hook) const {
  COHORT_CHECK(
      is_leaf() && requires_grad(),
      "post-accumulate-grad hooks can only be registered on leaf tensors that require grad");
  int id = next_hook_id();
  autograd::meta(*this).post_hooks.emplace_back(id, std::move(hook));
  return id;
}

}  // namespace cohort::core
