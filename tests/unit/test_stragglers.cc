// The straggler detector (trainer/stragglers.h): which rank's own step time (without its waits for
// the others) exceeds the others' median by the factor, over a window of steps.
#include <gtest/gtest.h>

#include "trainer/stragglers.h"

namespace {

using cohort::trainer::RankTimes;
using cohort::trainer::StragglerDetector;

// In lock step every rank's step takes as long; the fast ranks spend the difference waiting.
std::vector<RankTimes> lock_step(const std::vector<double>& own_ms, double data_ms = 0) {
  double slowest = 0;
  for (double o : own_ms) slowest = std::max(slowest, o);
  std::vector<RankTimes> out;
  for (double o : own_ms) out.push_back({slowest, data_ms, slowest - o});
  return out;
}

TEST(Stragglers, TheSlowRankIsNamedAtTheEndOfTheWindowAndOnlyIt) {
  StragglerDetector d(1.5, 100, 4);
  EXPECT_TRUE(d.add(50, lock_step({10, 10, 18, 11})).empty());  // half a window
  const auto found = d.add(50, lock_step({10, 10, 18, 11}, 9));
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].rank, 2);
  EXPECT_EQ(found[0].steps, 100);
  EXPECT_DOUBLE_EQ(found[0].own_ms, 18);
  EXPECT_DOUBLE_EQ(found[0].others_ms, 10);  // the median of 10, 10, 11
  EXPECT_DOUBLE_EQ(found[0].ratio, 1.8);
  // Data wait 9 ms in the second half of 100 steps of 18 ms: 4.5 / 18.
  EXPECT_DOUBLE_EQ(found[0].data_fraction, 0.25);
  EXPECT_EQ(describe(found[0], "node 2 (n2)"),
            "rank 2 on node 2 (n2): 1.8x the median step time of the other ranks over the last "
            "100 steps (its own time per step, without waiting for them: 18.0 ms against 10.0 "
            "ms); its data wait is 25%");
  // A new window starts empty.
  EXPECT_TRUE(d.add(100, lock_step({10, 10, 10, 10})).empty());
}

TEST(Stragglers, OfTwoRanksTheSlowOneIsComparedWithTheOther) {
  // 1.6x the other: above 1.5 (against both ranks' median it would be only 1.23x).
  StragglerDetector d(1.5, 10, 2);
  const auto found = d.add(10, lock_step({10, 16}));
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].rank, 1);
}

TEST(Stragglers, RanksWithinTheFactorOffOrAloneAreNotReported) {
  StragglerDetector even(1.5, 10, 3);
  EXPECT_TRUE(even.add(10, lock_step({10, 14, 12})).empty());
  StragglerDetector off(0, 10, 2);
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.add(10, lock_step({10, 40})).empty());
  // 2.5x, but 1.5 ms: the jitter of tiny steps, not a straggler.
  StragglerDetector tiny(1.5, 10, 2);
  EXPECT_TRUE(tiny.add(10, lock_step({1, 2.5})).empty());
  StragglerDetector alone(1.5, 10, 1);
  EXPECT_TRUE(alone.add(10, lock_step({40})).empty());
  // A malformed gather (not one entry per rank) reports nothing rather than guessing.
  StragglerDetector d(1.5, 10, 3);
  EXPECT_TRUE(d.add(10, lock_step({10, 40})).empty());
}

}  // namespace
