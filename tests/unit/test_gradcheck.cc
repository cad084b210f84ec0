// Every differentiable op's backward against central finite differences in float64.
#include <barrier>
#include <thread>

#include "gradcheck.h"

namespace cohort::test {
namespace {

using core::Shape;
using V = std::vector<Tensor>;
namespace ops = core;

TEST(Gradcheck, BinaryWithBroadcasting) {
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::add(x[0], x[1]); },
                        {rand64({3, 4}, 1), rand64({4}, 2)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::sub(x[0], x[1]); },
                        {rand64({2, 1, 3}, 3), rand64({4, 1}, 4)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::mul(x[0], x[1]); },
                        {rand64({3, 4}, 5), rand64({3, 1}, 6)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::div(x[0], x[1]); },
                        {rand64({3, 4}, 7), rand64({4}, 8, true, 0.5, 2.0)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::pow(x[0], x[1]); },
                        {rand64({5}, 9, true, 0.5, 2.0), rand64({5}, 10)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::maximum(x[0], x[1]); },
                        {rand64({6}, 11), rand64({6}, 12)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::minimum(x[0], x[1]); },
                        {rand64({6}, 13), rand64({6}, 14)}));
}

TEST(Gradcheck, ScalarOps) {
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::add(ops::mul(x[0], 3.0), 1.5); }, {rand64({4}, 1)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::div(ops::sub(x[0], 2.0), 4.0); }, {rand64({4}, 2)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::pow(x[0], 3.0); }, {rand64({4}, 3)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::pow(x[0], 0.5); }, {rand64({4}, 4, true, 0.5, 2)}));
}

TEST(Gradcheck, Unary) {
  auto pos = [](uint64_t s) { return rand64({3, 5}, s, true, 0.2, 3.0); };
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::neg(x[0]); }, {rand64({3, 5}, 1)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::exp(x[0]); }, {rand64({3, 5}, 2)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::log(x[0]); }, {pos(3)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::sqrt(x[0]); }, {pos(4)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::rsqrt(x[0]); }, {pos(5)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::abs(x[0]); }, {rand64({3, 5}, 6)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::square(x[0]); }, {rand64({3, 5}, 7)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::clamp(x[0], -0.5, 0.5); }, {rand64({3, 5}, 8)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::relu(x[0]); }, {rand64({3, 5}, 9)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::gelu(x[0]); }, {rand64({3, 5}, 10, true, -3, 3)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::gelu(x[0], "tanh"); },
                        {rand64({3, 5}, 11, true, -3, 3)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::tanh(x[0]); }, {rand64({3, 5}, 12, true, -2, 2)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::sigmoid(x[0]); }, {rand64({3, 5}, 13, true, -3, 3)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::silu(x[0]); }, {rand64({3, 5}, 14, true, -3, 3)}));
}

TEST(Gradcheck, Reductions) {
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::sum(x[0]); }, {rand64({3, 4}, 1)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::sum(x[0], {1}, true); }, {rand64({3, 4, 2}, 2)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::sum(x[0], {0, 2}); }, {rand64({3, 4, 2}, 3)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::mean(x[0], {-1}); }, {rand64({3, 4}, 4)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::var(x[0], {1}); }, {rand64({3, 5}, 5)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::var(x[0], {0}, 0, true); }, {rand64({4, 2}, 6)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::max(x[0], 1).first; }, {rand64({3, 5}, 7)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::min(x[0], 0, true).first; }, {rand64({3, 5}, 8)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::max(x[0]); }, {rand64({3, 5}, 9)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::min(x[0]); }, {rand64({3, 5}, 10)}));
}

TEST(Gradcheck, Matmul) {
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::matmul(x[0], x[1]); },
                        {rand64({3, 4}, 1), rand64({4, 5}, 2)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::matmul(x[0], x[1]); },
                        {rand64({2, 3, 4}, 3), rand64({4, 2}, 4)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::matmul(x[0], x[1]); },
                        {rand64({2, 1, 3, 4}, 5), rand64({3, 4, 2}, 6)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::matmul(x[0], x[1]); },
                        {rand64({4}, 7), rand64({4}, 8)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::matmul(x[0].t(), x[1]); },
                        {rand64({4, 3}, 9), rand64({4, 2}, 10)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::linear(x[0], x[1], x[2]); },
                        {rand64({5, 3}, 11), rand64({4, 3}, 12), rand64({4}, 13)}));
  // A batch times a matrix with an empty inner dim: zeros of the right shape, zero gradients.
  Tensor a = rand64({2, 3, 0}, 14), b = rand64({0, 4}, 15);
  Tensor y = ops::matmul(a, b);
  EXPECT_EQ(y.sizes(), (core::Shape{2, 3, 4}));
  EXPECT_EQ(ops::sum(ops::abs(y)).item<double>(), 0.0);
  ops::sum(y).backward();
  EXPECT_EQ(b.grad().sizes(), (core::Shape{0, 4}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::linear(x[0], x[1], Tensor()); },
                        {rand64({2, 5, 3}, 14), rand64({4, 3}, 15)}));
}

TEST(Gradcheck, SoftmaxAndLosses) {
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::softmax(x[0], -1); }, {rand64({3, 5}, 1)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::softmax(x[0], 0); }, {rand64({3, 5}, 2)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::log_softmax(x[0], 1); }, {rand64({2, 3, 4}, 3)}));
  Tensor target = core::from_vector<int64_t>({0, 3, 1, 4}, {4});
  for (auto red : {core::Reduction::kMean, core::Reduction::kSum, core::Reduction::kNone}) {
    EXPECT_TRUE(gradcheck(
        [&](const V& x) {
          return ops::cross_entropy(x[0], target, {-100, 0.0, red});
        },
        {rand64({4, 5}, 4)}));
  }
  EXPECT_TRUE(gradcheck(
      [&](const V& x) {
        return ops::cross_entropy(x[0], target, {3, 0.1, core::Reduction::kMean});
      },
      {rand64({4, 5}, 5)}));
  Tensor t3 = core::from_vector<int64_t>({0, 2, 1, 1, 0, 2}, {2, 3});
  EXPECT_TRUE(
      gradcheck([&](const V& x) { return ops::cross_entropy(x[0], t3); }, {rand64({2, 3, 3}, 6)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::mse_loss(x[0], x[1]); },
                        {rand64({3, 4}, 7), rand64({3, 4}, 8)}));
}

TEST(Gradcheck, LayerNormEmbeddingAttention) {
  EXPECT_TRUE(gradcheck([](const V& x) { return ops::layer_norm(x[0], {5}, x[1], x[2]); },
                        {rand64({3, 5}, 1), rand64({5}, 2), rand64({5}, 3)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::layer_norm(x[0], {2, 3}, Tensor(), Tensor());
      },
      {rand64({4, 2, 3}, 4)}));
  Tensor idx = core::from_vector<int64_t>({1, 0, 3, 1}, {2, 2});
  EXPECT_TRUE(
      gradcheck([&](const V& x) { return ops::embedding(x[0], idx); }, {rand64({4, 3}, 5)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], true); },
      {rand64({2, 4, 3}, 6), rand64({2, 4, 3}, 7), rand64({2, 4, 3}, 8)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], false); },
      {rand64({3, 3}, 9), rand64({5, 3}, 10), rand64({5, 2}, 11)}));
  // Causal with more keys than queries, and batch dims that broadcast (the composite form).
  EXPECT_TRUE(gradcheck(
      [](const V& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], true); },
      {rand64({2, 3, 4}, 12), rand64({2, 5, 4}, 13), rand64({2, 5, 6}, 14)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], true); },
      {rand64({2, 3, 4}, 15), rand64({1, 3, 4}, 16), rand64({1, 3, 2}, 17)}));
}

// Winograd F(2x2, 3x3) in float64, forced (kAuto keeps float64 on im2col): odd and even output
// sizes (a tile hanging over the edge), padding 0, 1 and 2, with and without bias.
TEST(Gradcheck, ConvWinograd) {
  auto conv = [](int64_t pad, bool bias) {
    return [=](const V& x) {
      return ops::conv2d(x[0], x[1], bias ? x[2] : Tensor(),
                         {{1, 1}, {pad, pad}, {1, 1}, 1, core::Conv2dAlgorithm::kWinograd});
    };
  };
  EXPECT_TRUE(
      gradcheck(conv(1, true), {rand64({2, 3, 5, 6}, 1), rand64({4, 3, 3, 3}, 2), rand64({4}, 3)}));
  EXPECT_TRUE(gradcheck(conv(0, false), {rand64({1, 2, 6, 7}, 4), rand64({3, 2, 3, 3}, 5)}));
  EXPECT_TRUE(
      gradcheck(conv(2, true), {rand64({1, 2, 3, 4}, 6), rand64({2, 2, 3, 3}, 7), rand64({2}, 8)}));
}

TEST(Gradcheck, ConvAndPool) {
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::conv2d(x[0], x[1], x[2], {{1, 1}, {1, 1}, {1, 1}, 1});
      },
      {rand64({2, 2, 5, 5}, 1), rand64({3, 2, 3, 3}, 2), rand64({3}, 3)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::conv2d(x[0], x[1], Tensor(), {{2, 1}, {0, 1}, {2, 1}, 2});
      },
      {rand64({1, 4, 7, 6}, 4), rand64({2, 2, 2, 3}, 5)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::max_pool2d(x[0], {{2, 2}, {2, 2}, {0, 0}});
      },
      {rand64({2, 2, 4, 4}, 6)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::max_pool2d(x[0], {{3, 3}, {2, 2}, {1, 1}});
      },
      {rand64({1, 2, 5, 5}, 7)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::avg_pool2d(x[0], {{2, 2}, {1, 1}, {1, 1}, false});
      },
      {rand64({1, 2, 4, 3}, 8)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::avg_pool2d(x[0], {{2, 2}, {2, 2}, {0, 0}});
      },
      {rand64({2, 1, 4, 4}, 9)}));
}

TEST(Gradcheck, ViewsAndIndexing) {
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return x[0].permute({2, 0, 1}).reshape({4, 6});
      },
      {rand64({2, 3, 4}, 1)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return x[0].slice(1, 1, 4, 2); }, {rand64({3, 5}, 2)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return x[0].select(0, -1); }, {rand64({3, 5}, 3)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return x[0].expand({3, 4, 2}); }, {rand64({4, 1}, 4)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return x[0].unsqueeze(1).squeeze(); }, {rand64({3, 4}, 5)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::cat({x[0], x[1]}, 1);
      },
      {rand64({2, 3}, 6), rand64({2, 2}, 7)}));
  EXPECT_TRUE(gradcheck(
      [](const V& x) {
        return ops::stack({x[0], x[1]}, 0);
      },
      {rand64({2, 3}, 8), rand64({2, 3}, 9)}));
  EXPECT_TRUE(
      gradcheck([](const V& x) { return ops::split(x[0], 2, 0)[1]; }, {rand64({5, 2}, 10)}));
  Tensor idx = core::from_vector<int64_t>({2, 0, 2}, {3});
  EXPECT_TRUE(
      gradcheck([&](const V& x) { return ops::index_select(x[0], 1, idx); }, {rand64({2, 3}, 11)}));
  Tensor gi = core::from_vector<int64_t>({0, 2, 1, 1}, {2, 2});
  EXPECT_TRUE(
      gradcheck([&](const V& x) { return ops::gather(x[0], 1, gi); }, {rand64({2, 3}, 12)}));
  Tensor mask = core::from_vector<bool>({true, false, false, true, true, false}, {2, 3});
  EXPECT_TRUE(gradcheck([&](const V& x) { return ops::where(mask, x[0], x[1]); },
                        {rand64({2, 3}, 13), rand64({3}, 14)}));
  EXPECT_TRUE(gradcheck([&](const V& x) { return ops::masked_fill(x[0], mask, 2.0); },
                        {rand64({2, 3}, 15)}));
}

TEST(Gradcheck, BatchNormWithBatchStatistics) {
  core::BatchNormOptions o;
  EXPECT_TRUE(gradcheck(
      [&](const V& x) { return ops::batch_norm(x[0], x[1], x[2], Tensor(), Tensor(), o); },
      {rand64({4, 3, 2, 2}, 21), rand64({3}, 22), rand64({3}, 23)}));
  EXPECT_TRUE(gradcheck(
      [&](const V& x) { return ops::batch_norm(x[0], Tensor(), Tensor(), Tensor(), Tensor(), o); },
      {rand64({5, 2}, 24)}));
  // Evaluation: an affine map through the running statistics.
  Tensor rm = rand64({3}, 25, false), rv = rand64({3}, 26, false, 0.5, 2);
  core::BatchNormOptions eval{false};
  EXPECT_TRUE(gradcheck([&](const V& x) { return ops::batch_norm(x[0], x[1], x[2], rm, rv, eval); },
                        {rand64({2, 3, 4}, 27), rand64({3}, 28), rand64({3}, 29)}));
}

// PyTorch's running statistics: the mean, and the unbiased variance, blended by momentum.
TEST(BatchNorm, RunningStatisticsFollowPyTorchsUpdate) {
  Tensor x = rand64({4, 2, 3}, 31, false);
  Tensor rm = core::zeros({2}, core::TensorOptions(core::DType::kFloat64));
  Tensor rv = core::ones({2}, core::TensorOptions(core::DType::kFloat64));
  ops::batch_norm(x, Tensor(), Tensor(), rm, rv, {true, 0.25, 1e-5});
  for (int64_t c = 0; c < 2; ++c) {
    double s = 0, ss = 0;
    const int64_t m = 4 * 3;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t l = 0; l < 3; ++l) s += x.data_ptr<double>()[(n * 2 + c) * 3 + l];
    const double mean = s / m;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t l = 0; l < 3; ++l) {
        const double d = x.data_ptr<double>()[(n * 2 + c) * 3 + l] - mean;
        ss += d * d;
      }
    EXPECT_NEAR(rm.data_ptr<double>()[c], 0.25 * mean, 1e-12);
    EXPECT_NEAR(rv.data_ptr<double>()[c], 0.75 + 0.25 * ss / (m - 1), 1e-12);
  }
}

// SyncBatchNorm over two ranks (threads summing through a barrier) equals one batch_norm over
// both halves: the same outputs, the same input gradients, and parameter gradients that add up.
TEST(BatchNorm, SynchronisedHalvesEqualTheWholeBatch) {
  Tensor whole = rand64({6, 3, 2}, 41, false);
  Tensor w = rand64({3}, 42, false), b = rand64({3}, 43, false);
  Tensor gy = rand64({6, 3, 2}, 44, false);
  Tensor xs = whole.detach().clone(), ws = w.clone(), bs = b.clone();
  xs.set_requires_grad(true);
  ws.set_requires_grad(true);
  bs.set_requires_grad(true);
  Tensor ys = ops::batch_norm(xs, ws, bs, Tensor(), Tensor(), {});
  core::sum(core::mul(ys, gy)).backward();

  std::barrier sync(2);
  Tensor slots[2];
  Tensor y[2], gx[2], gw[2], gb[2];
  auto rank = [&](int r) {
    core::StatSum sum = [&, r](Tensor& t) {
      slots[r] = t.clone();
      sync.arrive_and_wait();
      Tensor total = core::add(slots[0], slots[1]);
      sync.arrive_and_wait();
      t.copy_(total);
    };
    Tensor x = whole.narrow(0, 3 * r, 3).contiguous().detach(), wr = w.clone(), br = b.clone();
    x.set_requires_grad(true);
    wr.set_requires_grad(true);
    br.set_requires_grad(true);
    y[r] = ops::batch_norm(x, wr, br, Tensor(), Tensor(), {}, sum);
    core::sum(core::mul(y[r], gy.narrow(0, 3 * r, 3))).backward();
    gx[r] = x.grad();
    gw[r] = wr.grad();
    gb[r] = br.grad();
  };
  std::thread other(rank, 1);
  rank(0);
  other.join();
  EXPECT_TRUE(core::allclose(core::cat({y[0], y[1]}, 0), ys, 1e-12, 1e-12));
  EXPECT_TRUE(core::allclose(core::cat({gx[0], gx[1]}, 0), xs.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(core::allclose(core::add(gw[0], gw[1]), ws.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(core::allclose(core::add(gb[0], gb[1]), bs.grad(), 1e-12, 1e-12));
}

}  // namespace
}  // namespace cohort::test
