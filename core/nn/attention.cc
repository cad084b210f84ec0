// Attention layers, initialised as PyTorch initialises them.
#include "core/nn/attention.h"

#include <cmath>

#include "core/autograd/grad_mode.h"

namespace cohort::core::nn {

MultiheadAttention::MultiheadAttention(const AttentionSpec& s, Generator* gen) : spec_(s) {
  COHORT_CHECK(s.embed_dim > 0 && s.num_heads > 0 && s.embed_dim % s.num_heads == 0,
               "attention: embed_dim ", s.embed_dim, " must be a positive multiple of num_heads ",
               s.num_heads);
  const int64_t E = s.embed_dim;
  // nn.MultiheadAttention._reset_parameters: xavier_uniform_ in_proj, zero biases.
  Tensor w = empty({3 * E, E});
  const double bound = std::sqrt(6.0 / static_cast<double>(E + 3 * E));
  uniform_(w, -bound, bound, gen);
  register_parameter("in_proj_weight", in_proj_weight, w);
  if (s.bias) register_parameter("in_proj_bias", in_proj_bias, zeros({3 * E}));
  out_proj_ = register_module("out_proj", std::make_shared<Linear>(E, E, s.bias, gen));
  if (s.bias) {
    autograd::NoGradGuard guard;
    out_proj_->bias.copy_(zeros({E}));
  }
}

Tensor MultiheadAttention::forward(const Tensor& x) {
  COHORT_CHECK(x.dim() == 3 && x.size(2) == spec_.embed_dim, "attention: expected input [B, T, ",
               spec_.embed_dim, "], got ", shape_str(x.sizes()));
  const int64_t B = x.size(0), T = x.size(1), E = spec_.embed_dim, hd = E / spec_.num_heads;
  auto parts = split(linear(x, in_proj_weight, in_proj_bias), E, 2);
  auto heads = [&](const Tensor& t) {
    return t.reshape({B, T, spec_.num_heads, hd}).transpose(1, 2);
  };
  Tensor y =
      scaled_dot_product_attention(heads(parts[0]), heads(parts[1]), heads(parts[2]), spec_.causal);
  return (*out_proj_)(y.transpose(1, 2).reshape({B, T, E}));
}

TransformerEncoderLayer::TransformerEncoderLayer(const TransformerSpec& s, Generator* gen)
    : spec_(s) {
  COHORT_CHECK(s.activation == "relu" || s.activation == "gelu",
               "transformer_block: activation must be relu or gelu, got '", s.activation, "'");
  self_attn_ =
      register_module("self_attn", std::make_shared<MultiheadAttention>(
                                       AttentionSpec{s.d_model, s.nhead, s.bias, s.causal}, gen));
  linear1_ = register_module("linear1",
                             std::make_shared<Linear>(s.d_model, s.dim_feedforward, s.bias, gen));
  dropout_ = register_module("dropout", std::make_shared<Dropout>(s.dropout, gen));
  linear2_ = register_module("linear2",
                             std::make_shared<Linear>(s.dim_feedforward, s.d_model, s.bias, gen));
  norm1_ = register_module("norm1", std::make_shared<LayerNorm>(s.d_model, s.layer_norm_eps));
  norm2_ = register_module("norm2", std::make_shared<LayerNorm>(s.d_model, s.layer_norm_eps));
  dropout1_ = register_module("dropout1", std::make_shared<Dropout>(s.dropout, gen));
  dropout2_ = register_module("dropout2", std::make_shared<Dropout>(s.dropout, gen));
}

Tensor TransformerEncoderLayer::feed_forward(const Tensor& x) {
  Tensor h = (*linear1_)(x);
  h = spec_.activation == "relu" ? relu(h) : gelu(h);
  return (*dropout2_)((*linear2_)((*dropout_)(h)));
}

Tensor TransformerEncoderLayer::forward(const Tensor& x) {
  if (spec_.norm_first) {
    Tensor h = add(x, (*dropout1_)((*self_attn_)((*norm1_)(x))));
    return add(h, feed_forward((*norm2_)(h)));
  }
  Tensor h = (*norm1_)(add(x, (*dropout1_)((*self_attn_)(x))));
  return (*norm2_)(add(h, feed_forward(h)));
}

PositionEmbedding::PositionEmbedding(int64_t num_embeddings, int64_t dim, Generator* gen) {
  COHORT_CHECK(num_embeddings > 0 && dim > 0, "position_embedding: sizes must be positive, got ",
               num_embeddings, " x ", dim);
  Tensor w = empty({num_embeddings, dim});
  normal_(w, 0.0, 0.02, gen);  // GPT-2's initialisation
  register_parameter("weight", weight, w);
}

Tensor PositionEmbedding::forward(const Tensor& x) {
  COHORT_CHECK(x.dim() == 3 && x.size(2) == weight.size(1),
               "position_embedding: expected input [B, T, ", weight.size(1), "], got ",
               shape_str(x.sizes()));
  COHORT_CHECK(x.size(1) <= weight.size(0), "position_embedding: sequence length ", x.size(1),
               " exceeds num_embeddings ", weight.size(0));
  return add(x, weight.narrow(0, 0, x.size(1)));
}

}  // namespace cohort::core::nn
