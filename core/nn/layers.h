// Layers with PyTorch's default initialisation, so that the same seed strategy gives comparable
// training curves: Linear, Conv2d, pooling, activations, Dropout, LayerNorm, Embedding, Sequential.
#pragma once

#include <string>

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
  Tensor forward(const Tensor& x) override { return x.flatten(1); }
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
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
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  Tensor forward(const Tensor& x) override {
    return layer_norm(x, {weight.size(0)}, weight, bias, eps_);
  }
  Tensor weight, bias;

 private:
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
  Tensor forward(const Tensor& x) override;
  size_t size() const { return layers_.size(); }

 private:
  std::vector<ModulePtr> layers_;
};

}  // namespace cohort::core::nn
