#include "trainer/stragglers.h"

#include <algorithm>
#include <cstdio>

namespace cohort::trainer {

StragglerDetector::StragglerDetector(double factor, int64_t window_steps, int world)
    : factor_(factor),
      window_(std::max<int64_t>(window_steps, 1)),
      world_(world),
      sums_(static_cast<size_t>(std::max(world, 0))) {}

std::vector<Straggler> StragglerDetector::add(int64_t steps, const std::vector<RankTimes>& ranks) {
  std::vector<Straggler> out;
  if (!enabled() || steps <= 0 || static_cast<int>(ranks.size()) != world_) return out;
  const double n = static_cast<double>(steps);
  for (size_t r = 0; r < ranks.size(); ++r) {
    sums_[r].step_ms += ranks[r].step_ms * n;
    sums_[r].data_ms += ranks[r].data_ms * n;
    sums_[r].wait_ms += ranks[r].wait_ms * n;
  }
  steps_ += steps;
  if (steps_ < window_) return out;
  const double total = static_cast<double>(steps_);
  std::vector<double> own(sums_.size());
  for (size_t r = 0; r < sums_.size(); ++r) own[r] = std::max(sums_[r].own_ms(), 0.0) / total;
  for (size_t r = 0; r < sums_.size(); ++r) {
    // Against the others' median, not everyone's: of two ranks, one twice as slow is 2x the
    // other, where it would be only 1.33x the median of both.
    std::vector<double> others;
    for (size_t q = 0; q < own.size(); ++q)
      if (q != r) others.push_back(own[q]);
    std::sort(others.begin(), others.end());
    const size_t m = others.size();
    const double median = m % 2 ? others[m / 2] : (others[m / 2 - 1] + others[m / 2]) / 2;
    if (median <= 0 || own[r] <= factor_ * median || own[r] - median < kMinExcessMs) continue;
    Straggler s;
    s.rank = static_cast<int>(r);
    s.steps = steps_;
    s.own_ms = own[r];
    s.others_ms = median;
    s.ratio = own[r] / median;
    s.data_fraction = sums_[r].step_ms > 0 ? sums_[r].data_ms / sums_[r].step_ms : 0;
    out.push_back(s);
  }
  steps_ = 0;
  std::fill(sums_.begin(), sums_.end(), RankTimes{});
  return out;
}

std::string describe(const Straggler& s, const std::string& where) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "rank %d%s%s: %.1fx the median step time of the other ranks over the last %lld "
                "steps (its own time per step, without waiting for them: %.1f ms against %.1f "
                "ms); its data wait is %.0f%%",
                s.rank, where.empty() ? "" : " on ", where.c_str(), s.ratio,
                static_cast<long long>(s.steps), s.own_ms, s.others_ms, 100 * s.data_fraction);
  return buf;
}

}  // namespace cohort::trainer
