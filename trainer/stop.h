// Stopping a run cleanly: SIGTERM, SIGUSR1 (a launcher stopping its workers, Slurm before a time
// limit or preemption) or a first SIGINT (Ctrl-C) end training after the current step with a
// checkpoint; a second SIGINT ends the process at once. With several ranks
// they must all stop after the same step, which StopVote agrees on.
#pragma once

#include <signal.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "collectives/process_group.h"

namespace cohort::trainer {

// Installs the stop handlers for its lifetime and restores the previous ones.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_term_ {
  }, old_usr1_{}, old_int_{};
};

// Agrees across ranks whether a stop signal arrived. Each step starts a vote (an all-reduce of the
// local signal) and reads the previous step's, which has finished meanwhile: no rank waits for it.
// Not a signal: train.max_time asks to stop (larger than any signal number).
inline constexpr int kStopForTime = 1000;
// Not a signal: node 0's agent asked the workers of an elastic job to make room for nodes that
// wait to join (checked at each checkpoint). The run stops after the vote with a checkpoint and
// exits with kExitMembership, and the agents meet again.
inline constexpr int kStopForMembership = 1001;
inline constexpr int kExitMembership = 75;
// Not a signal: rank 0 saw a replacement rank waiting to join (in-place healing, heal.h); every
// rank meets it after the same step and goes on.
inline constexpr int kRegroup = 1002;

class StopVote {
 public:
  // A null group: a single process, which needs no vote.
  StopVote(collectives::ProcessGroup* group, core::Device device);
  ~StopVote();
  // The signal that stops every rank after this step, or 0. `request` is this rank's own reason
  // to stop (kStopForTime); the largest of every rank's signal and request wins.
  int after_step(int request = 0);

 private:
  collectives::ProcessGroup* group_;
  core::Tensor flag_;
  std::shared_ptr<collectives::Work> work_;
};

// For fault-tolerance tests and drills: COHORT_KILL_AT_STEP=RANK:STEP makes that rank die by
// SIGKILL right after STEP, as a crash would, on a job's first attempt only (COHORT_RESTART_COUNT
// unset or 0), so that a restarted job can finish. Nothing when it does not apply to this rank;
// throws ConfigError when the variable is malformed.
std::optional<int64_t> kill_at_step(int rank);
// Drill: COHORT_KILL_IN_CHECKPOINT=RANK:STEP makes that rank die by SIGKILL while it writes the
// sharded checkpoint of STEP (its file written, the checkpoint not yet renamed into place), on a
// job's first attempt only; with checkpoint.async that is on the background writer, while
// training goes on.
std::optional<int64_t> kill_in_checkpoint(int rank);
// Test hook: COHORT_TEST_STOP_AT_STEP=RANK:STEP makes that rank stop itself (SIGSTOP) right after
// STEP, as a hung or frozen process would.
std::optional<int64_t> stop_at_step(int rank);
// Test hook: COHORT_TEST_SKIP_COLLECTIVE=RANK:STEP makes that rank skip the stop vote after STEP
// (a rank that skips a collective, for the flight recorder's diagnosis).
std::optional<int64_t> skip_collective_at_step(int rank);
// Test hook: COHORT_TEST_STEP_DELAY_MS="RANK:MS" makes that rank sleep MS after each step (a
// straggler); 0 for the other ranks.
int64_t step_delay_ms(int rank);

}  // namespace cohort::trainer
