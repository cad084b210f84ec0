// Autograd semantics: accumulation, shared subgraphs, retain_graph, no_grad, detach, hooks and the
// version counter that turns in-place changes to saved tensors into errors.
#include <gtest/gtest.h>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/ops.h"

namespace cohort::core {
namespace {

Tensor param(std::initializer_list<double> v) {
  return tensor(v, TensorOptions(DType::kFloat64)).requires_grad_();
}

TEST(Autograd, AccumulatesIntoLeavesAcrossBackwards) {
  Tensor x = param({1, 2, 3});
  sum(mul(x, x)).backward();
  EXPECT_TRUE(allclose(x.grad(), tensor({2, 4, 6}, DType::kFloat64)));
  sum(mul(x, 3.0)).backward();
  EXPECT_TRUE(allclose(x.grad(), tensor({5, 7, 9}, DType::kFloat64)));
}

// DDP's buckets: a linear layer writes its weight and bias gradients straight into the leaves'
// destinations; anything else (a second contribution, a hook, an accumulation) still gives the
// right gradient.
TEST(Autograd, GradDestinationsReceiveLinearGradientsInPlace) {
  Generator gen(3);
  Tensor x = randn({4, 5}, {}, &gen), w0 = randn({3, 5}, {}, &gen), b0 = randn({3}, {}, &gen);
  auto grads = [&](Tensor& w, Tensor& b, int uses) {
    Tensor y = linear(x, w, b);
    for (int u = 1; u < uses; ++u) y = add(y, linear(x, w, b));
    sum(mul(y, y)).backward();
  };
  Tensor w_ref = w0.clone().requires_grad_(), b_ref = b0.clone().requires_grad_();
  grads(w_ref, b_ref, 1);
  Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
  Tensor flat = full({20}, 7.0);  // as a bucket: w's slot, then b's, then other memory
  Tensor w_slot = flat.narrow(0, 0, 15).view({3, 5}), b_slot = flat.narrow(0, 15, 3);
  autograd::set_grad_destination(w, w_slot);
  autograd::set_grad_destination(b, b_slot);
  EXPECT_EQ(autograd::grad_destination_of(w).raw_data(), w_slot.raw_data());
  EXPECT_FALSE(autograd::grad_destination_of(w_ref).defined());
  grads(w, b, 1);
  EXPECT_EQ(w.grad().raw_data(), w_slot.raw_data());
  EXPECT_EQ(b.grad().raw_data(), b_slot.raw_data());
  EXPECT_TRUE(allclose(w_slot, w_ref.grad()));
  EXPECT_TRUE(allclose(b_slot, b_ref.grad()));
  EXPECT_EQ(sum(flat.narrow(0, 18, 2)).item<float>(), 14.0f);  // untouched
  // Accumulating into the defined gradient stays in place and sums.
  grads(w, b, 1);
  EXPECT_EQ(w.grad().raw_data(), w_slot.raw_data());
  EXPECT_TRUE(allclose(w.grad(), mul(w_ref.grad(), 2.0)));
  // Two uses of the weight: its gradient is a sum, made the usual way.
  Tensor w2 = w0.clone().requires_grad_(), b2 = b0.clone().requires_grad_();
  Tensor w2_ref = w0.clone().requires_grad_(), b2_ref = b0.clone().requires_grad_();
  autograd::set_grad_destination(w2, zeros({3, 5}));
  grads(w2, b2, 2);
  grads(w2_ref, b2_ref, 2);
  EXPECT_TRUE(allclose(w2.grad(), w2_ref.grad()));
  // A leaf with a hook: the hook sees the gradient and its result is what is kept.
  Tensor w3 = w0.clone().requires_grad_(), b3 = b0.clone().requires_grad_();
  Tensor w3_slot = zeros({3, 5});
  autograd::set_grad_destination(w3, w3_slot);
  w3.register_hook([](const Tensor& g) { return mul(g, 0.5); });
  grads(w3, b3, 1);
  EXPECT_TRUE(allclose(w3.grad(), mul(w_ref.grad(), 0.5)));
  // Cancelled: a new tensor again. A destination of the wrong shape is refused.
  autograd::set_grad_destination(w, Tensor());
  EXPECT_FALSE(autograd::grad_destination_of(w).defined());
  w.set_grad(Tensor());
  grads(w, b, 1);
  EXPECT_NE(w.grad().raw_data(), w_slot.raw_data());
  EXPECT_THROW(autograd::set_grad_destination(w, zeros({5, 3})), InvalidArgument);
}

TEST(Autograd, SharedSubgraphSumsBothPaths) {
  Tensor x = param({2});
  Tensor y = exp(x);
  Tensor z = add(mul(y, y), y);  // d/dx = 2e^{2x} + e^x
  z.backward(ones({1}, DType::kFloat64));
  double e = std::exp(2.0);
  EXPECT_NEAR(x.grad().item<double>(), 2 * e * e + e, 1e-9);
}

TEST(Autograd, SecondBackwardNeedsRetainGraph) {
  Tensor x = param({1, 2});
  Tensor y = sum(mul(x, x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  EXPECT_TRUE(allclose(x.grad(), tensor({4, 8}, DType::kFloat64)));
  try {
    y.backward();
    FAIL() << "second backward without retain_graph must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("retain_graph"), std::string::npos) << e.what();
  }
}

TEST(Autograd, BackwardNeedsScalarOrGradient) {
  Tensor x = param({1, 2});
  Tensor y = mul(x, 2.0);
  EXPECT_THROW(y.backward(), InvalidArgument);
  y.backward(tensor({1, -1}, DType::kFloat64));
  EXPECT_TRUE(allclose(x.grad(), tensor({2, -2}, DType::kFloat64)));
  EXPECT_THROW(tensor({1}).backward(), InvalidArgument);  // nothing requires grad
}

TEST(Autograd, NoGradAndDetachStopHistory) {
  Tensor x = param({1, 2});
  {
    autograd::NoGradGuard g;
    Tensor y = mul(x, 2.0);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_FALSE(y.grad_fn());
  }
  EXPECT_TRUE(autograd::GradMode::is_enabled());
  Tensor d = mul(x, 2.0).detach();
  EXPECT_FALSE(d.requires_grad());
  Tensor y = add(mul(x, d), x);  // d is a constant
  sum(y).backward();
  EXPECT_TRUE(allclose(x.grad(), tensor({3, 5}, DType::kFloat64)));
}

TEST(Autograd, TensorHooksCanReplaceGradients) {
  Tensor x = param({1, 2});
  Tensor h = mul(x, 3.0);
  std::vector<double> seen;
  h.register_hook([&](const Tensor& g) {
    seen.push_back(g.select(0, 0).item<double>());
    return mul(g, 10.0);
  });
  int leaf_calls = 0;
  int id = x.register_hook([&](const Tensor&) {
    ++leaf_calls;
    return Tensor();  // observe only
  });
  sum(h).backward();
  EXPECT_EQ(seen, std::vector<double>{1.0});
  EXPECT_EQ(leaf_calls, 1);
  EXPECT_TRUE(allclose(x.grad(), tensor({30, 30}, DType::kFloat64)));
  x.remove_hook(id);
  sum(mul(x, 1.0)).backward();
  EXPECT_EQ(leaf_calls, 1);
}

TEST(Autograd, PostAccumulateHooksSeeTheAccumulatedGrad) {
  Tensor w = param({1, 1});
  Tensor b = param({0});
  std::vector<std::string> order;
  w.register_post_accumulate_grad_hook([&](Tensor& p) {
    order.push_back("w");
    EXPECT_TRUE(allclose(p.grad(), tensor({2, 2}, DType::kFloat64)));
  });
  b.register_post_accumulate_grad_hook([&](Tensor&) { order.push_back("b"); });
  Tensor y = add(sum(mul(w, 2.0)), b);  // b was used last, so its gradient is ready first
  y.backward(ones({1}, DType::kFloat64));
  EXPECT_EQ(order, (std::vector<std::string>{"b", "w"}));
  EXPECT_THROW(mul(w, 2.0).register_post_accumulate_grad_hook([](Tensor&) {}), InvalidArgument);
}

TEST(Autograd, InPlaceChangeOfSavedTensorIsAnError) {
  Tensor x = param({1, 2});
  Tensor y = exp(x);  // saves its output
  Tensor z = sum(y);
  {
    autograd::NoGradGuard g;
    mul_(y, 2.0);
  }
  try {
    z.backward();
    FAIL() << "backward through a modified saved tensor must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("modified by an in-place operation"), std::string::npos)
        << e.what();
  }
  Tensor w = param({1, 2});
  Tensor v = mul(w, w);
  EXPECT_THROW(mul_(w, 2.0), InvalidArgument);  // in-place on a leaf that requires grad
  EXPECT_THROW(add_(v, w), InvalidArgument);
}

TEST(Autograd, GradientsFlowThroughViews) {
  Tensor x = tensor({1, 2, 3, 4, 5, 6}, DType::kFloat64).requires_grad_();
  Tensor m = x.view({2, 3});
  // Columns 1 and 2 of m through a transposed slice; column 0 through select.
  Tensor y = add(sum(m.t().slice(0, 1, 3)), sum(mul(m.select(1, 0), 10.0)));
  y.backward();
  EXPECT_TRUE(allclose(x.grad(), tensor({10, 1, 1, 10, 1, 1}, DType::kFloat64)));
}

}  // namespace
}  // namespace cohort::core
