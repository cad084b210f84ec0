// Ops and optimisers against the values PyTorch computes for the same inputs (tests/data, made by
// tests/gen_reference.py with Debian's python3-torch).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/ops/ops.h"
#include "core/optim/optimizer.h"

namespace cohort::core {
namespace {

using nlohmann::json;
using V = std::vector<Tensor>;

const json& reference() {
  static const json j = [] {
    std::ifstream f(std::string(COHORT_SOURCE_DIR) + "/tests/data/torch_reference.json");
    return json::parse(f);
  }();
  return j;
}

Tensor decode(const json& e) {
  Shape shape = e["shape"].get<Shape>();
  auto data = e["data"].get<std::vector<double>>();
  Tensor t = from_vector(data, shape);
  return e["dtype"] == "int64" ? t.to(DType::kInt64) : t.to(DType::kFloat32);
}

::testing::AssertionResult close(const Tensor& got, const Tensor& want, double tol = 1e-5) {
  if (got.sizes() != want.sizes())
    return ::testing::AssertionFailure()
           << "shape " << shape_str(got.sizes()) << " vs " << shape_str(want.sizes());
  if (!allclose(got, want, tol, tol))
    return ::testing::AssertionFailure() << "\ngot  " << got << "\nwant " << want;
  return ::testing::AssertionSuccess();
}

std::map<std::string, std::function<Tensor(const V&, const json&)>> ops() {
  auto target = [](const json& c) {
    return from_vector(c["target"].get<std::vector<int64_t>>(),
                       {static_cast<int64_t>(c["target"].size())});
  };
  return {
      {"add", [](const V& x, const json&) { return add(x[0], x[1]); }},
      {"sub", [](const V& x, const json&) { return sub(x[0], x[1]); }},
      {"mul", [](const V& x, const json&) { return mul(x[0], x[1]); }},
      {"div", [](const V& x, const json&) { return div(x[0], x[1]); }},
      {"pow_scalar", [](const V& x, const json&) { return pow(x[0], 3.0); }},
      {"pow_tensor", [](const V& x, const json&) { return pow(x[0], x[1]); }},
      {"maximum", [](const V& x, const json&) { return maximum(x[0], x[1]); }},
      {"neg", [](const V& x, const json&) { return neg(x[0]); }},
      {"exp", [](const V& x, const json&) { return exp(x[0]); }},
      {"log", [](const V& x, const json&) { return log(x[0]); }},
      {"sqrt", [](const V& x, const json&) { return sqrt(x[0]); }},
      {"abs", [](const V& x, const json&) { return abs(x[0]); }},
      {"clamp", [](const V& x, const json&) { return clamp(x[0], -0.5, 0.25); }},
      {"relu", [](const V& x, const json&) { return relu(x[0]); }},
      {"gelu", [](const V& x, const json&) { return gelu(x[0]); }},
      {"gelu_tanh", [](const V& x, const json&) { return gelu(x[0], "tanh"); }},
      {"tanh", [](const V& x, const json&) { return tanh(x[0]); }},
      {"sigmoid", [](const V& x, const json&) { return sigmoid(x[0]); }},
      {"silu", [](const V& x, const json&) { return silu(x[0]); }},
      {"sum_dim", [](const V& x, const json&) { return sum(x[0], {1}, true); }},
      {"mean_dim",
       [](const V& x, const json&) {
         return mean(x[0], {0, 2});
       }},
      {"var_dim", [](const V& x, const json&) { return var(x[0], {1}); }},
      {"max_dim", [](const V& x, const json&) { return max(x[0], 1).first; }},
      {"min_dim", [](const V& x, const json&) { return min(x[0], 0, true).first; }},
      {"matmul", [](const V& x, const json&) { return matmul(x[0], x[1]); }},
      {"matmul_batched", [](const V& x, const json&) { return matmul(x[0], x[1]); }},
      {"linear", [](const V& x, const json&) { return linear(x[0], x[1], x[2]); }},
      {"conv2d",
       [](const V& x, const json&) {
         return conv2d(x[0], x[1], x[2], {{1, 1}, {1, 1}, {1, 1}, 1});
       }},
      {"conv2d_groups",
       [](const V& x, const json&) {
         return conv2d(x[0], x[1], Tensor(), {{2, 1}, {0, 1}, {2, 1}, 2});
       }},
      {"max_pool2d",
       [](const V& x, const json&) {
         return max_pool2d(x[0], {{2, 2}, {0, 0}, {0, 0}});
       }},
      {"avg_pool2d",
       [](const V& x, const json&) {
         return avg_pool2d(x[0], {{2, 2}, {1, 1}, {1, 1}, false});
       }},
      {"softmax", [](const V& x, const json&) { return softmax(x[0], -1); }},
      {"log_softmax", [](const V& x, const json&) { return log_softmax(x[0], 0); }},
      {"cross_entropy", [=](const V& x, const json& c) { return cross_entropy(x[0], target(c)); }},
      {"cross_entropy_smooth_ignore",
       [=](const V& x, const json& c) {
         return cross_entropy(x[0], target(c), {3, 0.1, Reduction::kMean});
       }},
      {"cross_entropy_sum",
       [=](const V& x, const json& c) {
         return cross_entropy(x[0], target(c), {-100, 0.0, Reduction::kSum});
       }},
      {"mse_loss", [](const V& x, const json&) { return mse_loss(x[0], x[1]); }},
      {"layer_norm", [](const V& x, const json&) { return layer_norm(x[0], {5}, x[1], x[2]); }},
      {"embedding",
       [](const V& x, const json& c) {
         return embedding(x[0], from_vector(c["indices"].get<std::vector<int64_t>>(), {2, 2}));
       }},
      {"attention_causal",
       [](const V& x, const json&) {
         return scaled_dot_product_attention(x[0], x[1], x[2], true);
       }},
  };
}

TEST(TorchReference, EveryOpForwardAndBackwardMatchesPyTorch) {
  auto table = ops();
  const json& cases = reference()["cases"];
  ASSERT_EQ(cases.size(), table.size())
      << "every reference case needs an entry here, and vice versa";
  for (const json& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ASSERT_TRUE(table.count(name)) << "no Cohort op for reference case " << name;
    V inputs;
    for (const json& e : c["inputs"]) {
      Tensor x = decode(e);
      if (is_floating(x.dtype())) x.set_requires_grad(true);
      inputs.push_back(x);
    }
    Tensor out = table[name](inputs, c);
    EXPECT_TRUE(close(out, decode(c["output"])));
    if (c["grads"].empty()) continue;
    sum(mul(out, decode(c["weight"]))).backward();
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (c["grads"][i].is_null()) continue;
      SCOPED_TRACE("gradient of input " + std::to_string(i));
      ASSERT_TRUE(inputs[i].grad().defined());
      EXPECT_TRUE(close(inputs[i].grad(), decode(c["grads"][i]), 2e-5));
    }
  }
}

TEST(TorchReference, FiveOptimizerStepsMatchPyTorch) {
  Tensor x = decode(reference()["x"]), y = decode(reference()["y"]);
  for (const json& run : reference()["optim"]) {
    const std::string name = run["name"];
    SCOPED_TRACE(name);
    Tensor w = decode(run["w0"]).requires_grad_(), b = decode(run["b0"]).requires_grad_();
    std::unique_ptr<optim::Optimizer> opt;
    if (name == "sgd_momentum_nesterov_wd") {
      opt = std::make_unique<optim::SGD>(V{w, b}, optim::SGDOptions{0.1, 0.9, 0, 0.01, true});
    } else if (name == "sgd_momentum") {
      opt = std::make_unique<optim::SGD>(V{w, b}, optim::SGDOptions{0.05, 0.9, 0, 0, false});
    } else if (name == "sgd_plain") {
      opt = std::make_unique<optim::SGD>(V{w, b}, optim::SGDOptions{0.1, 0, 0, 0, false});
    } else {
      ASSERT_EQ(name, "adamw");
      opt =
          std::make_unique<optim::AdamW>(V{w, b}, optim::AdamWOptions{0.01, 0.9, 0.99, 1e-8, 0.1});
    }
    for (size_t s = 0; s < run["steps"].size(); ++s) {
      SCOPED_TRACE("step " + std::to_string(s + 1));
      opt->zero_grad();
      mse_loss(linear(x, w, b), y).backward();
      opt->step();
      EXPECT_TRUE(close(w, decode(run["steps"][s]["w"])));
      EXPECT_TRUE(close(b, decode(run["steps"][s]["b"])));
    }
  }
}

// Plain, momentum, dampening with weight decay, nesterov with weight decay.
std::vector<optim::SGDOptions> sgd_variants() {
  return {{0.1, 0, 0, 0, false},
          {0.05, 0.9, 0, 0, false},
          {0.05, 0.9, 0.3, 0.01, false},
          {0.1, 0.9, 0, 0.01, true}};
}

// SGD updates contiguous float32 CPU parameters in one fused pass; anything else takes the
// op-by-op path. Both must give the same bits, or a run would depend on memory layout.
TEST(TorchReference, FusedSgdStepEqualsTheOpByOpPathBitForBit) {
  Generator gen(7);
  for (const auto& cfg : sgd_variants()) {
    SCOPED_TRACE("momentum " + std::to_string(cfg.momentum) + " nesterov " +
                 std::to_string(cfg.nesterov));
    Tensor fused = randn({5, 7}, {}, &gen), ops = fused.clone();
    optim::SGD a(V{fused}, cfg), b(V{ops}, cfg);
    for (int step = 0; step < 4; ++step) {
      Tensor g = randn({5, 7}, {}, &gen);
      fused.set_grad(g.clone());
      ops.set_grad(g.transpose(0, 1).contiguous().transpose(0, 1));  // same values, strided
      ASSERT_FALSE(ops.grad().is_contiguous());
      a.step();
      b.step();
      EXPECT_TRUE(close(fused, ops, 0)) << "step " << step;
    }
  }
}

// A parameter server's update averages its workers' gradients inside SGD's pass (step_mean, a
// block at a time); it must give the bits of averaging first and stepping after. 5000 elements:
// more than one block, and a last block that is not full.
TEST(TorchReference, SgdStepOfAMeanEqualsAveragingThenStepping) {
  Generator gen(11);
  for (const auto& cfg : sgd_variants()) {
    for (int workers : {1, 2, 3}) {
      SCOPED_TRACE("momentum " + std::to_string(cfg.momentum) + " nesterov " +
                   std::to_string(cfg.nesterov) + " workers " + std::to_string(workers));
      Tensor fused = randn({5000}, {}, &gen), plain = fused.clone();
      optim::SGD a(V{fused}, cfg), b(V{plain}, cfg);
      for (int step = 0; step < 3; ++step) {
        std::vector<Tensor> grads;
        std::vector<const float*> ptrs;
        for (int w = 0; w < workers; ++w) {
          grads.push_back(randn({5000}, {}, &gen));
          ptrs.push_back(grads.back().data_ptr<float>());
        }
        ASSERT_TRUE(a.step_mean(ptrs));
        // The server's own averaging: the sum in worker order, scaled in the last addition.
        Tensor mean = grads[0].clone();
        const float scale = 1.0f / static_cast<float>(workers);
        for (int w = 1; w < workers; ++w) {
          float* m = mean.data_ptr<float>();
          const float* g = grads[static_cast<size_t>(w)].data_ptr<float>();
          for (int64_t j = 0; j < mean.numel(); ++j)
            m[j] = w + 1 == workers ? (m[j] + g[j]) * scale : m[j] + g[j];
        }
        plain.set_grad(mean);
        b.step();
        EXPECT_TRUE(close(fused, plain, 0)) << "step " << step;
      }
      EXPECT_EQ(a.steps(), b.steps());
      if (cfg.momentum != 0) {
        EXPECT_TRUE(close(a.state_dict().at("0.momentum_buffer"),
                          b.state_dict().at("0.momentum_buffer"), 0));
      }
    }
  }
  // An optimizer without the one-pass form says so and changes nothing.
  Tensor w = randn({8}, {}, &gen), before = w.clone(), g = randn({8}, {}, &gen);
  optim::AdamW adam(V{w}, optim::AdamWOptions{});
  const float* ptr = g.data_ptr<float>();
  EXPECT_FALSE(adam.step_mean(std::span<const float* const>(&ptr, 1)));
  EXPECT_TRUE(close(w, before, 0));
  EXPECT_EQ(adam.steps(), 0);
}

TEST(TorchReference, OptimizerStateRoundTripContinuesIdentically) {
  Tensor x = decode(reference()["x"]), y = decode(reference()["y"]);
  auto make = [&](Tensor& w, Tensor& b) {
    return optim::AdamW(V{w, b}, optim::AdamWOptions{0.01, 0.9, 0.99, 1e-8, 0.1});
  };
  auto step = [&](optim::Optimizer& o, Tensor& w, Tensor& b) {
    o.zero_grad();
    mse_loss(linear(x, w, b), y).backward();
    o.step();
  };
  Tensor w1 = decode(reference()["optim"][0]["w0"]).requires_grad_(),
         b1 = zeros({2}).requires_grad_();
  auto o1 = make(w1, b1);
  for (int i = 0; i < 3; ++i) step(o1, w1, b1);
  Tensor w2 = w1.detach().clone().requires_grad_(), b2 = b1.detach().clone().requires_grad_();
  auto o2 = make(w2, b2);
  o2.load_state_dict(o1.state_dict());
  EXPECT_EQ(o2.steps(), 3);
  step(o1, w1, b1);
  step(o2, w2, b2);
  EXPECT_TRUE(close(w1, w2, 0));
}

}  // namespace
}  // namespace cohort::core
