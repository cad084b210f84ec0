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

LayerNorm::LayerNorm(int64_t dim, double eps) : eps_(eps) {
  register_parameter("weight", weight, ones({dim}));
  register_parameter("bias", bias, zeros({dim}));
}

Embedding::Embedding(int64_t num, int64_t dim, Generator* gen) {
  Tensor w = empty({num, dim});
  normal_(w, 0.0, 1.0, gen);
  register_parameter("weight", weight, w);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (auto& l : layers_) h = l->forward(h);
  return h;
}

}  // namespace cohort::core::nn
