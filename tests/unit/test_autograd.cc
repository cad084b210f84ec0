// Autograd semantics: accumulation, shared subgraphs, retain_graph, no_grad, detach, hooks and the
// version counter that turns in-place changes to saved tensors into errors.
#include <gtest/gtest.h>

#include "core/autograd/grad_mode.h"
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
