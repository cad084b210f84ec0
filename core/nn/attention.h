// Attention layers under PyTorch's names, so that state dicts move between the two:
// MultiheadAttention (self-attention, batch first: in_proj_weight, in_proj_bias, out_proj.*),
// TransformerEncoderLayer (self_attn, linear1, linear2, norm1, norm2; post- or pre-norm), and
// PositionEmbedding, GPT-2's learned absolute positions added to a [B, T, D] input.
#pragma once

#include <string>

#include "core/nn/layers.h"

namespace cohort::core::nn {

struct AttentionSpec {
  int64_t embed_dim = 0, num_heads = 1;
  bool bias = true;
  bool causal = false;  // PyTorch passes is_causal at call time; a layer of a config fixes it
};

// x [B, T, E] -> [B, T, E]. Dropout of the attention probabilities is not applied.
class MultiheadAttention : public Module {
 public:
  MultiheadAttention(const AttentionSpec& spec, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  Tensor in_proj_weight, in_proj_bias;

 private:
  AttentionSpec spec_;
  std::shared_ptr<Linear> out_proj_;
};

struct TransformerSpec {
  int64_t d_model = 0, nhead = 1, dim_feedforward = 2048;
  double dropout = 0.1, layer_norm_eps = 1e-5;
  std::string activation = "relu";  // relu | gelu
  bool norm_first = false, bias = true, causal = false;
};

class TransformerEncoderLayer : public Module {
 public:
  TransformerEncoderLayer(const TransformerSpec& spec, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;

 private:
  Tensor feed_forward(const Tensor& x);
  TransformerSpec spec_;
  std::shared_ptr<MultiheadAttention> self_attn_;
  std::shared_ptr<Linear> linear1_, linear2_;
  std::shared_ptr<LayerNorm> norm1_, norm2_;
  std::shared_ptr<Dropout> dropout_, dropout1_, dropout2_;
};

// x [B, T, D] + weight[0:T]; T must not exceed num_embeddings.
class PositionEmbedding : public Module {
 public:
  PositionEmbedding(int64_t num_embeddings, int64_t dim, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  Tensor weight;
};

}  // namespace cohort::core::nn
