// The models `cohort train` builds by name: mlp, cnn (the reference CNN of
// shared/bench/fmnist_lib.py) and gpt (a decoder-only transformer with tied input/output
// embeddings).
#pragma once

#include <vector>

#include "core/nn/layers.h"

namespace cohort::core::nn {

// in -> hidden... -> out with ReLU between; flattens its input from dim 1.
class MLP : public Module {
 public:
  MLP(int64_t in, const std::vector<int64_t>& hidden, int64_t out, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;

 private:
  std::vector<std::shared_ptr<Linear>> layers_;
};

// conv3x3(1->32,pad1)-relu-maxpool2 / conv3x3(32->64,pad1)-relu-maxpool2 / fc 3136->128-relu / fc
// 128->10 for 28x28 inputs (fc 64*(height/4)*(width/4)->128 for others).
class CNN : public Module {
 public:
  explicit CNN(int64_t in_channels = 1, int64_t classes = 10, Generator* gen = nullptr,
               int64_t height = 28, int64_t width = 28);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<Conv2d> c1_, c2_;
  std::shared_ptr<Linear> f1_, f2_;
};

struct GPTConfig {
  int64_t vocab_size = 256;
  int64_t context = 64;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t dim = 128;
  double dropout = 0.0;
};

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(const GPTConfig& c, Generator* gen);
  Tensor forward(const Tensor& x) override;

 private:
  int64_t heads_;
  std::shared_ptr<Linear> qkv_, proj_;
};

class Block : public Module {
 public:
  Block(const GPTConfig& c, Generator* gen);
  Tensor forward(const Tensor& x) override;

 private:
  std::shared_ptr<LayerNorm> ln1_, ln2_;
  std::shared_ptr<CausalSelfAttention> attn_;
  std::shared_ptr<Linear> fc_, proj_;
  std::shared_ptr<Dropout> drop_;
};

// tokens [B, T] int64 -> logits [B, T, vocab].
class GPT : public Module {
 public:
  explicit GPT(const GPTConfig& c, Generator* gen = nullptr);
  Tensor forward(const Tensor& tokens) override;
  const GPTConfig& config() const { return config_; }

 private:
  GPTConfig config_;
  std::shared_ptr<Embedding> tok_, pos_;
  std::vector<std::shared_ptr<Block>> blocks_;
  std::shared_ptr<LayerNorm> ln_f_;
};

}  // namespace cohort::core::nn
