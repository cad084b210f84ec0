// Layers with PyTorch's default initialisation, so that the same seed strategy gives comparable
// training curves: Linear, Conv2d, pooling, activations, Dropout, LayerNorm, Embedding, shape
// layers (Flatten, Unflatten, Identity), Sequential.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/nn/module.h"
#include "core/ops/ops.h"

namespace cohort::core::nn {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override { return linear(x, weight, bias); }
  Tensor weight, bias;
};

struct Conv2dSpec {
  int64_t in_channels, out_channels, kernel;
  int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
  bool bias = true;
};

class Conv2d : public Module {
 public:
  explicit Conv2d(const Conv2dSpec& spec, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;

 private:
  Conv2dOptions opts_;
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0)
      : opts_{{kernel, kernel}, {stride, stride}, {padding, padding}} {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, opts_); }

 private:
  Pool2dOptions opts_;
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0)
      : opts_{{kernel, kernel}, {stride, stride}, {padding, padding}} {}
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, opts_); }

 private:
  Pool2dOptions opts_;
};

class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1)
      : start_(start_dim), end_(end_dim) {}
  Tensor forward(const Tensor& x) override { return x.flatten(start_, end_); }

 private:
  int64_t start_, end_;
};

// PyTorch's nn.Unflatten: dimension `dim` becomes `sizes` (whose product is its size).
class Unflatten : public Module {
 public:
  Unflatten(int64_t dim, std::vector<int64_t> sizes) : dim_(dim), sizes_(std::move(sizes)) {}
  Tensor forward(const Tensor& x) override;

 private:
  int64_t dim_;
  std::vector<int64_t> sizes_;
};

class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
};

// PyTorch's nn.AdaptiveAvgPool2d for output sizes that divide the input's (the common global
// pooling, output 1, among them): an average pool with kernel and stride input / output.
class AdaptiveAvgPool2d : public Module {
 public:
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w) : out_h_(out_h), out_w_(out_w) {}
  Tensor forward(const Tensor& x) override;

 private:
  int64_t out_h_, out_w_;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
};

class Tanh : public Module {
 public:
  Tensor forward(const Tensor& x) override { return tanh(x); }
};

class Sigmoid : public Module {
 public:
  Tensor forward(const Tensor& x) override { return sigmoid(x); }
};

class SiLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return silu(x); }
};

class GELU : public Module {
 public:
  explicit GELU(std::string approximate = "none") : approximate_(std::move(approximate)) {}
  Tensor forward(const Tensor& x) override { return gelu(x, approximate_); }

 private:
  std::string approximate_;
};

class Dropout : public Module {
 public:
  explicit Dropout(double p, Generator* gen = nullptr) : p_(p), gen_(gen) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p_, is_training(), gen_); }

 private:
  double p_;
  Generator* gen_;
};

class LayerNorm : public Module {
 public:
  // Without elementwise_affine there are no parameters (PyTorch's elementwise_affine=False).
  explicit LayerNorm(int64_t dim, double eps = 1e-5, bool elementwise_affine = true);
  Tensor forward(const Tensor& x) override { return layer_norm(x, {dim_}, weight, bias, eps_); }
  Tensor weight, bias;

 private:
  int64_t dim_;
  double eps_;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator* gen = nullptr);
  Tensor forward(const Tensor& indices) override { return embedding(weight, indices); }
  Tensor weight;
};

class Sequential : public Module {
 public:
  Sequential() = default;
  template <typename M>
  std::shared_ptr<M> add(std::shared_ptr<M> m) {
    layers_.push_back(m);
    return register_module(std::to_string(layers_.size() - 1), m);
  }
  // Runs ReLU followed by MaxPool2d as pool-then-relu: the same values and gradients (relu is
  // monotonic and zeroes the gradient of every non-positive maximum either way) for a quarter of
  // the relu work at a 2x2 pool.
  Tensor forward(const Tensor& x) override;
  size_t size() const { return layers_.size(); }

 private:
  std::vector<ModulePtr> layers_;
};

}  // namespace cohort::core::nn
