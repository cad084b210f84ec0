// What a run tells its user and its run directory: the progress line (a rewritten line on a
// terminal, one line per log interval otherwise), metrics.jsonl and TensorBoard events. Only the
// leader writes; every rank may call it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/stragglers.h"
#include "trainer/tensorboard.h"

namespace cohort::trainer {

struct EvalResult;

class Reporter {
 public:
  // `tokens_per_sample` > 0: language data, reported in tokens/s and perplexity as well.
  Reporter(const Config& c, bool leader, bool resumed, int64_t tokens_per_sample);

  struct StepLine {
    int64_t step, total_steps, epoch;
    double loss, lr, samples_per_s, eta_s;
    std::vector<RankTimes> ranks;  // every rank's mean times per step since the last line
  };
  void step(const StepLine& l);
  // An evaluation; `early_stop` adds why training stops (empty: it goes on).
  // train_s: training time so far in this process, evaluations left out (time to accuracy).
  void eval(int64_t step, int64_t epoch, const EvalResult& e, double train_s,
            const std::string& early_stop);
  // One {"event":"rank"} record per rank: samples/s and peak memory.
  void ranks(const std::vector<nlohmann::json>& per_rank);
  void summary(int64_t steps, double train_s, double samples_per_s, double test_acc,
               double test_loss, int world);
  void write(const nlohmann::json& record);
  bool leader() const { return leader_; }

 private:
  bool leader_, tty_;
  int64_t tokens_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<EventWriter> events_;
};

// When a run writes checkpoints: every checkpoint.every_steps steps, else at the end of each
// epoch; and whenever it stops early. Remembers the last one written and how long it took.
class CheckpointPolicy {
 public:
  explicit CheckpointPolicy(const CheckpointConfig& c) : every_(c.every_steps) {}
  bool after_step(int64_t step) const { return every_ > 0 && step % every_ == 0; }
  bool after_epoch(int64_t step, bool epoch_done) const {
    return every_ == 0 && epoch_done && !saved(step);
  }
  bool saved(int64_t step) const { return last_ == step; }
  void wrote(int64_t step, double seconds) {
    last_ = step;
    seconds_ = seconds;
  }
  double last_seconds() const { return seconds_; }

 private:
  int64_t every_;
  int64_t last_ = -1;
  double seconds_ = 0;
};

}  // namespace cohort::trainer
