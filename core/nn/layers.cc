// Layer constructors (PyTorch's default initialisation) and forwards.
#include "core/nn/layers.h"

#include <cmath>

#include "core/autograd/grad_mode.h"

namespace cohort::core::nn {
namespace {
// PyTorch's reset_parameters for Linear and Conv: kaiming_uniform(a=sqrt(5)), bias
// U(±1/sqrt(fan_in)).
void init_weight_and_bias(Tensor& w, Tensor* b, Generator* gen) {
  kaiming_uniform_(w, std::sqrt(5.0), gen);
  if (b && b->defined()) {
    double bound = 1.0 / std::sqrt(static_cast<double>(fan_in(w)));
    uniform_(*b, -bound, bound, gen);
  }
}
}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias, Generator* gen) {
  COHORT_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got ",
               in_features, " -> ", out_features);
  Tensor w = empty({out_features, in_features});
  Tensor b = has_bias ? empty({out_features}) : Tensor();
  init_weight_and_bias(w, has_bias ? &b : nullptr, gen);
  register_parameter("weight", weight, w);
  if (has_bias) register_parameter("bias", bias, b);
}

Conv2d::Conv2d(const Conv2dSpec& s, Generator* gen)
    : opts_{{s.stride, s.stride}, {s.padding, s.padding}, {s.dilation, s.dilation}, s.groups} {
  COHORT_CHECK(s.in_channels > 0 && s.out_channels > 0 && s.kernel > 0 && s.groups > 0 &&
                   s.in_channels % s.groups == 0 && s.out_channels % s.groups == 0,
               "Conv2d: invalid channels ", s.in_channels, " -> ", s.out_channels, " with kernel ",
               s.kernel, " and groups ", s.groups);
  Tensor w = empty({s.out_channels, s.in_channels / s.groups, s.kernel, s.kernel});
  Tensor b = s.bias ? empty({s.out_channels}) : Tensor();
  init_weight_and_bias(w, s.bias ? &b : nullptr, gen);
  register_parameter("weight", weight, w);
  if (s.bias) register_parameter("bias", bias, b);
}

Tensor Conv2d::forward(const Tensor& x) { return conv2d(x, weight, bias, opts_); }

LayerNorm::LayerNorm(int64_t dim, double eps, bool elementwise_affine) : dim_(dim), eps_(eps) {
  if (!elementwise_affine) return;
  register_parameter("weight", weight, ones({dim}));
  register_parameter("bias", bias, zeros({dim}));
}

Embedding::Embedding(int64_t num, int64_t dim, Generator* gen) {
  Tensor w = empty({num, dim});
  normal_(w, 0.0, 1.0, gen);
  register_parameter("weight", weight, w);
}

Tensor Unflatten::forward(const Tensor& x) {
  const int64_t d = wrap_dim(dim_, x.dim());
  Shape shape(x.sizes().begin(), x.sizes().begin() + d);
  shape.insert(shape.end(), sizes_.begin(), sizes_.end());
  shape.insert(shape.end(), x.sizes().begin() + d + 1, x.sizes().end());
  COHORT_CHECK(shape_numel(shape) == x.numel(), "unflatten: dimension ", dim_, " of size ",
               x.size(d), " cannot become ", shape_str(sizes_));
  return x.reshape(shape);
}

Tensor AdaptiveAvgPool2d::forward(const Tensor& x) {
  COHORT_CHECK(x.dim() == 4, "adaptive_avg_pool2d: input must be [N, C, H, W], got ",
               shape_str(x.sizes()));
  const int64_t h = x.size(2), w = x.size(3);
  COHORT_CHECK(out_h_ > 0 && out_w_ > 0 && h % out_h_ == 0 && w % out_w_ == 0,
               "adaptive_avg_pool2d: output size [", out_h_, ", ", out_w_,
               "] must divide the input's [", h, ", ", w, "]");
  if (out_h_ == 1 && out_w_ == 1) return mean(x, {2, 3}, true);
  Pool2dOptions o{{h / out_h_, w / out_w_}, {h / out_h_, w / out_w_}, {0, 0}};
  return avg_pool2d(x, o);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (i + 1 < layers_.size() && dynamic_cast<ReLU*>(layers_[i].get()) &&
        dynamic_cast<MaxPool2d*>(layers_[i + 1].get())) {
      h = relu((*layers_[i + 1])(h));
      ++i;
      continue;
    }
    h = (*layers_[i])(h);
  }
  return h;
}

}  // namespace cohort::core::nn
