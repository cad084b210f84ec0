// fp16 training's dynamic loss scale: unscaling, overflow detection (inf and NaN, on this rank or
// reported by another), skipping, halving and growth.
#include <gtest/gtest.h>

#include <limits>

#include "core/ops/ops.h"
#include "trainer/trainer.h"

namespace cohort::trainer {
namespace {

using core::Tensor;

Tensor param_with_grad(const std::vector<float>& g) {
  Tensor p = core::zeros({static_cast<int64_t>(g.size())});
  p.set_requires_grad(true);
  p.set_grad(core::from_vector(g, {static_cast<int64_t>(g.size())}));
  return p;
}

std::vector<float> grad_of(const Tensor& p) {
  Tensor g = p.grad().contiguous();
  return std::vector<float>(g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
}

TEST(LossScaler, UnscalesFiniteGradientsAndDoublesAfterTheInterval) {
  LossScaler s(8.0, 3);
  EXPECT_EQ(s.scaled(core::scalar_tensor(2.0)).item<double>(), 16.0);
  for (int step = 0; step < 3; ++step) {
    Tensor p = param_with_grad({8, -16, 0}), q = param_with_grad({4});
    ASSERT_TRUE(s.unscale({p, q}));
    if (step < 2) {
      EXPECT_EQ(grad_of(p), (std::vector<float>{1, -2, 0}));
      EXPECT_EQ(grad_of(q), (std::vector<float>{0.5f}));
      EXPECT_EQ(s.scale(), 8.0);
    }
  }
  EXPECT_EQ(s.scale(), 16.0);  // three clean steps in a row
}

TEST(LossScaler, AnInfOrNanSkipsTheStepHalvesTheScaleAndRestartsTheCount) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  LossScaler s(1024.0, 2);
  Tensor ok = param_with_grad({2});
  ASSERT_TRUE(s.unscale({ok}));  // one clean step
  for (float bad : {inf, -inf, nan}) {
    Tensor p = param_with_grad({1, bad}), q = param_with_grad({3});
    const double before = s.scale();
    EXPECT_FALSE(s.unscale({p, q}));
    EXPECT_EQ(s.scale(), before / 2);
    EXPECT_EQ(grad_of(q), (std::vector<float>{3}));  // left as it was: the step is skipped
  }
  // The count of clean steps started again: one is not enough to double.
  Tensor p = param_with_grad({1});
  ASSERT_TRUE(s.unscale({p}));
  EXPECT_EQ(s.scale(), 128.0);
  ASSERT_TRUE(s.unscale({param_with_grad({1})}));
  EXPECT_EQ(s.scale(), 256.0);
}

// Under ZeRO-1 each rank holds its own gradients: an overflow on another rank must skip this
// rank's step too.
TEST(LossScaler, AnOverflowOnAnotherRankSkipsThisOne) {
  LossScaler s(64.0, 100);
  Tensor p = param_with_grad({1, 2});
  const auto other_rank_overflowed = [](double mine) {
    return mine + std::numeric_limits<double>::infinity();
  };
  EXPECT_FALSE(s.unscale({p}, other_rank_overflowed));
  EXPECT_EQ(s.scale(), 32.0);
  EXPECT_EQ(grad_of(p), (std::vector<float>{1, 2}));
  EXPECT_TRUE(s.unscale({p}, [](double mine) { return mine * 2; }));
  EXPECT_EQ(grad_of(p), (std::vector<float>{1.0f / 32, 2.0f / 32}));
}

}  // namespace
}  // namespace cohort::trainer
