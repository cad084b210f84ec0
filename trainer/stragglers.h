// Which rank holds a data-parallel job back. In lock-step training every rank's step takes as
// long as the slowest one's, so a rank's step time says nothing; what differs is each rank's own
// time, the step without the time it waited in collectives for the others. A rank whose own time
// exceeds the median of the other ranks' by diagnostics.straggler_factor over
// diagnostics.straggler_steps steps is a straggler; its data wait (the share of its steps spent
// waiting for the data loader) says whether its input or its compute is slow. A rank must also be
// kMinExcessMs a step slower: with steps of a few milliseconds, rank 0's logging or a scheduler's
// hiccup is a large factor and no straggler.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cohort::trainer {

// One rank's mean times per step over a log interval, in milliseconds.
struct RankTimes {
  double step_ms = 0;  // wall time per step
  double data_ms = 0;  // waiting for the data loader
  double wait_ms = 0;  // in collectives (collectives::thread_collective_ns)
  double own_ms() const { return step_ms - wait_ms; }
};

struct Straggler {
  int rank = 0;
  int64_t steps = 0;         // over how many steps
  double own_ms = 0;         // its own time per step
  double others_ms = 0;      // the median of the other ranks' own times
  double ratio = 0;          // own_ms / others_ms
  double data_fraction = 0;  // its data wait / its step time
};

inline constexpr double kMinExcessMs = 5;

class StragglerDetector {
 public:
  // factor <= 0 turns it off.
  StragglerDetector(double factor, int64_t window_steps, int world);
  // One log interval of `steps` steps with every rank's times (rank order). When the steps added
  // since the last verdict reach the window, returns the stragglers over them (most often none)
  // and starts a new window.
  std::vector<Straggler> add(int64_t steps, const std::vector<RankTimes>& ranks);
  bool enabled() const { return factor_ > 0 && world_ > 1; }

 private:
  double factor_;
  int64_t window_;
  int world_;
  int64_t steps_ = 0;
  std::vector<RankTimes> sums_;  // per rank: the times above multiplied by steps, summed
};

// "rank 3 on n2: 1.8x the median step time of the other ranks over the last 100 steps (its own
// time per step, without waiting for them: 41.2 ms against 22.9 ms); its data wait is 60%".
std::string describe(const Straggler& s, const std::string& where);

}  // namespace cohort::trainer
