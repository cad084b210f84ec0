// Tensor factories and random initialisers. Random numbers are drawn on the CPU from a Generator
// and copied to the target device, so a seed means the same values everywhere.
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/autograd/grad_mode.h"
#include "core/ops/backend.h"
#include "core/ops/ops.h"

namespace cohort::core {

Generator& default_generator() {
  static Generator g(0);
  return g;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

Tensor full(const Shape& shape, double value, TensorOptions opts) {
  bool rg = opts.requires_grad;
  Tensor t = empty(shape, opts.with_requires_grad(false));
  backend_for(t.device()).fill(t, value);
  if (rg) t.set_requires_grad(true);
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions opts) { return full(shape, 0.0, opts); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full(shape, 1.0, opts); }
Tensor zeros_like(const Tensor& t) { return zeros(t.sizes(), t.options()); }
Tensor ones_like(const Tensor& t) { return ones(t.sizes(), t.options()); }
Tensor full_like(const Tensor& t, double value) { return full(t.sizes(), value, t.options()); }
Tensor scalar_tensor(double value, TensorOptions opts) { return full({}, value, opts); }

Tensor arange(double start, double end, double step, TensorOptions opts) {
  COHORT_CHECK(step != 0, "arange: step must be non-zero");
  int64_t n = std::max<int64_t>(0, static_cast<int64_t>(std::ceil((end - start) / step)));
  Tensor cpu = empty({n}, TensorOptions(DType::kFloat64));
  double* p = cpu.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = start + static_cast<double>(i) * step;
  return cpu.to(opts.dtype).to(opts.device);
}
Tensor arange(int64_t end, TensorOptions opts) {
  return arange(0, static_cast<double>(end), 1, opts);
}

namespace {
// Fills a CPU float64 buffer from the generator, then converts and moves it.
template <typename Draw>
Tensor random_tensor(const Shape& shape, TensorOptions opts, Draw draw) {
  Tensor cpu = empty(shape, TensorOptions(DType::kFloat64));
  double* p = cpu.data_ptr<double>();
  for (int64_t i = 0; i < cpu.numel(); ++i) p[i] = draw();
  Tensor out = cpu.to(opts.dtype).to(opts.device);
  if (opts.requires_grad) out.set_requires_grad(true);
  return out;
}
Generator& gen_or_default(Generator* g) { return g ? *g : default_generator(); }
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts, Generator* gen) {
  Generator& g = gen_or_default(gen);
  return random_tensor(shape, opts, [&] { return g.uniform(); });
}

Tensor randn(const Shape& shape, TensorOptions opts, Generator* gen) {
  Generator& g = gen_or_default(gen);
  return random_tensor(shape, opts, [&] { return g.normal(); });
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts, Generator* gen) {
  COHORT_CHECK(high > low, "randint: high (", high, ") must be greater than low (", low, ")");
  Generator& g = gen_or_default(gen);
  Tensor cpu = empty(shape, TensorOptions(DType::kInt64));
  int64_t* p = cpu.data_ptr<int64_t>();
  for (int64_t i = 0; i < cpu.numel(); ++i)
    p[i] = low + static_cast<int64_t>(g.below(static_cast<uint64_t>(high - low)));
  return cpu.to(opts.dtype).to(opts.device);
}

Tensor randperm(int64_t n, Generator* gen) {
  Generator& g = gen_or_default(gen);
  Tensor t = empty({n}, TensorOptions(DType::kInt64));
  int64_t* p = t.data_ptr<int64_t>();
  std::iota(p, p + n, 0);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[g.below(static_cast<uint64_t>(i + 1))]);
  return t;
}

template <typename T>
Tensor from_vector(const std::vector<T>& data, const Shape& shape, TensorOptions opts) {
  COHORT_CHECK(static_cast<int64_t>(data.size()) == shape_numel(shape),
               "from_vector: ", data.size(), " values do not fill shape ", shape_str(shape));
  Tensor cpu = empty(shape, TensorOptions(dtype_of<T>()));
  if (!data.empty()) {
    if constexpr (std::is_same_v<T, bool>) {
      bool* p = cpu.data_ptr<bool>();
      for (size_t i = 0; i < data.size(); ++i) p[i] = data[i];
    } else {
      std::memcpy(cpu.raw_data(), data.data(), data.size() * sizeof(T));
    }
  }
  Tensor out = cpu.to(opts.dtype).to(opts.device);
  if (opts.requires_grad) out.set_requires_grad(true);
  return out;
}
template Tensor from_vector(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<uint8_t>&, const Shape&, TensorOptions);
template Tensor from_vector(const std::vector<bool>&, const Shape&, TensorOptions);

Tensor from_blob(void* data, const Shape& shape, DType dtype) {
  return from_blob(data, shape, dtype, nullptr);
}

Tensor from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner) {
  size_t nbytes = static_cast<size_t>(shape_numel(shape)) * element_size(dtype);
  std::function<void(void*)> release;
  if (owner) release = [owner = std::move(owner)](void*) {};
  auto storage = std::make_shared<StorageImpl>(data, nbytes, Device::cpu(), std::move(release));
  return Tensor(std::make_shared<TensorImpl>(storage, shape, contiguous_strides(shape), 0, dtype));
}

Tensor tensor(std::initializer_list<double> values, TensorOptions opts) {
  return from_vector(std::vector<double>(values), {static_cast<int64_t>(values.size())}, opts);
}

Tensor& uniform_(Tensor& t, double low, double high, Generator* gen) {
  autograd::NoGradGuard guard;
  Generator& g = gen_or_default(gen);
  t.copy_(random_tensor(t.sizes(), TensorOptions(t.dtype()).with_device(t.device()),
                        [&] { return low + (high - low) * g.uniform(); }));
  return t;
}

Tensor& normal_(Tensor& t, double mean, double std, Generator* gen) {
  autograd::NoGradGuard guard;
  Generator& g = gen_or_default(gen);
  t.copy_(random_tensor(t.sizes(), TensorOptions(t.dtype()).with_device(t.device()),
                        [&] { return mean + std * g.normal(); }));
  return t;
}

int64_t fan_in(const Tensor& t) {
  COHORT_CHECK(t.dim() >= 2, "fan_in needs a tensor with at least 2 dimensions, got ",
               shape_str(t.sizes()));
  return t.numel() / t.size(0);
}

Tensor& kaiming_uniform_(Tensor& t, double a, Generator* gen) {
  double gain = std::sqrt(2.0 / (1 + a * a));
  double bound = std::sqrt(3.0) * gain / std::sqrt(static_cast<double>(fan_in(t)));
  return uniform_(t, -bound, bound, gen);
}

Tensor& kaiming_normal_(Tensor& t, double a, Generator* gen) {
  double gain = std::sqrt(2.0 / (1 + a * a));
  return normal_(t, 0, gain / std::sqrt(static_cast<double>(fan_in(t))), gen);
}

}  // namespace cohort::core
