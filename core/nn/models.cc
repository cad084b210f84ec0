// mlp, cnn and gpt.
#include "core/nn/models.h"

#include <cmath>

namespace cohort::core::nn {

MLP::MLP(int64_t in, const std::vector<int64_t>& hidden, int64_t out, Generator* gen) {
  int64_t prev = in;
  std::vector<int64_t> sizes = hidden;
  sizes.push_back(out);
  for (size_t i = 0; i < sizes.size(); ++i) {
    layers_.push_back(register_module("l" + std::to_string(i + 1),
                                      std::make_shared<Linear>(prev, sizes[i], true, gen)));
    prev = sizes[i];
  }
}

Tensor MLP::forward(const Tensor& x) {
  Tensor h = x.dim() > 2 ? x.flatten(1) : x;
  for (size_t i = 0; i < layers_.size(); ++i) {
    h = (*layers_[i])(h);
    if (i + 1 < layers_.size()) h = relu(h);
  }
  return h;
}

CNN::CNN(int64_t in_channels, int64_t classes, Generator* gen, int64_t height, int64_t width) {
  COHORT_CHECK(height >= 4 && width >= 4, "cnn: inputs must be at least 4x4, got ", height, "x",
               width);
  c1_ = register_module("c1", std::make_shared<Conv2d>(Conv2dSpec{in_channels, 32, 3, 1, 1}, gen));
  c2_ = register_module("c2", std::make_shared<Conv2d>(Conv2dSpec{32, 64, 3, 1, 1}, gen));
  f1_ = register_module("f1",
                        std::make_shared<Linear>(64 * (height / 4) * (width / 4), 128, true, gen));
  f2_ = register_module("f2", std::make_shared<Linear>(128, classes, true, gen));
}

Tensor CNN::forward(const Tensor& x) {
  Pool2dOptions pool{{2, 2}, {2, 2}, {0, 0}};
  // relu and max-pooling commute (relu is monotonic), values and gradients alike; pooling first
  // runs relu and its backward on a quarter of the elements. Same function as the reference's
  // max_pool2d(relu(conv(x))).
  Tensor h = relu(max_pool2d((*c1_)(x), pool));
  h = relu(max_pool2d((*c2_)(h), pool));
  return (*f2_)(relu((*f1_)(h.flatten(1))));
}

CausalSelfAttention::CausalSelfAttention(const GPTConfig& c, Generator* gen) : heads_(c.heads) {
  COHORT_CHECK(c.dim % c.heads == 0, "gpt: dim (", c.dim, ") must be divisible by heads (", c.heads,
               ")");
  qkv_ = register_module("qkv", std::make_shared<Linear>(c.dim, 3 * c.dim, true, gen));
  proj_ = register_module("proj", std::make_shared<Linear>(c.dim, c.dim, true, gen));
}

Tensor CausalSelfAttention::forward(const Tensor& x) {
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), hd = C / heads_;
  auto parts = split((*qkv_)(x), C, 2);
  auto heads = [&](const Tensor& t) { return t.reshape({B, T, heads_, hd}).transpose(1, 2); };
  Tensor y = scaled_dot_product_attention(heads(parts[0]), heads(parts[1]), heads(parts[2]), true);
  return (*proj_)(y.transpose(1, 2).reshape({B, T, C}));
}

Block::Block(const GPTConfig& c, Generator* gen) {
  ln1_ = register_module("ln1", std::make_shared<LayerNorm>(c.dim));
  attn_ = register_module("attn", std::make_shared<CausalSelfAttention>(c, gen));
  ln2_ = register_module("ln2", std::make_shared<LayerNorm>(c.dim));
  fc_ = register_module("fc", std::make_shared<Linear>(c.dim, 4 * c.dim, true, gen));
  proj_ = register_module("proj", std::make_shared<Linear>(4 * c.dim, c.dim, true, gen));
  drop_ = register_module("drop", std::make_shared<Dropout>(c.dropout, gen));
}

Tensor Block::forward(const Tensor& x) {
  Tensor h = add(x, (*drop_)((*attn_)((*ln1_)(x))));
  return add(h, (*drop_)((*proj_)(gelu((*fc_)((*ln2_)(h)), "tanh"))));
}

GPT::GPT(const GPTConfig& c, Generator* gen) : config_(c) {
  tok_ = register_module("tok", std::make_shared<Embedding>(c.vocab_size, c.dim, gen));
  pos_ = register_module("pos", std::make_shared<Embedding>(c.context, c.dim, gen));
  {
    // GPT-2's initialisation: small normal embeddings keep the tied output head well scaled.
    normal_(tok_->weight, 0.0, 0.02, gen);
    normal_(pos_->weight, 0.0, 0.02, gen);
  }
  for (int64_t i = 0; i < c.layers; ++i)
    blocks_.push_back(register_module("h" + std::to_string(i), std::make_shared<Block>(c, gen)));
  ln_f_ = register_module("ln_f", std::make_shared<LayerNorm>(c.dim));
}

Tensor GPT::forward(const Tensor& tokens) {
  COHORT_CHECK(tokens.dim() == 2, "gpt: tokens must be [batch, time], got ",
               shape_str(tokens.sizes()));
  const int64_t T = tokens.size(1);
  COHORT_CHECK(T <= config_.context, "gpt: sequence length ", T, " exceeds the context ",
               config_.context);
  Tensor pos = arange(T).to(tokens.device());
  Tensor h = add((*tok_)(tokens), (*pos_)(pos));
  for (auto& b : blocks_) h = (*b)(h);
  h = (*ln_f_)(h);
  return matmul(h, tok_->weight.t());  // output head tied to the token embedding
}

}  // namespace cohort::core::nn
