#include "trainer/stop.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "collectives/flight_recorder.h"
#include "core/ops/ops.h"
#include "core/util/env.h"

namespace cohort::trainer {

namespace {

// Set by SIGTERM, SIGUSR1 or SIGINT while a run trains; the loop checks it after each step.
std::atomic<int> g_stop_signal{0};
void say(const char* text) {
  size_t n = 0;
  while (text[n]) ++n;
  (void)!::write(STDERR_FILENO, text, n);
}
void on_stop_signal(int sig) {
  if (sig == SIGINT) {
    if (g_stop_signal.load() != 0) {
      // A second Ctrl-C: stop now, as the user asked, without a checkpoint.
      say("\ncohort: second SIGINT: stopping at once, without a checkpoint\n");
      ::signal(SIGINT, SIG_DFL);
      ::raise(SIGINT);
      return;
    }
    say("\ncohort: SIGINT: stopping after this step with a checkpoint (Ctrl-C again stops at "
        "once)\n");
  }
  g_stop_signal.store(sig);
}

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &sa, &old_term_);
  ::sigaction(SIGUSR1, &sa, &old_usr1_);
  ::sigaction(SIGINT, &sa, &old_int_);
}

StopSignals::~StopSignals() {
  ::sigaction(SIGTERM, &old_term_, nullptr);
  ::sigaction(SIGUSR1, &old_usr1_, nullptr);
  ::sigaction(SIGINT, &old_int_, nullptr);
}

StopVote::StopVote(collectives::ProcessGroup* group, core::Device device) : group_(group) {
  if (group_)
    flag_ = core::zeros({1}, core::TensorOptions(core::DType::kInt32).with_device(device));
}

StopVote::~StopVote() {
  if (!work_) return;
  try {
    work_->wait();
  } catch (...) {
  }
}

int StopVote::after_step(int request) {
  if (!group_) return std::max(g_stop_signal.load(), request);
  if (work_) {
    work_->wait();
    work_ = nullptr;
    const int agreed = flag_.to(core::Device::cpu()).item<int32_t>();
    if (agreed) return agreed;
  }
  flag_.fill_(std::max(g_stop_signal.load(), request));
  const collectives::FlightTag tag("stop vote");
  work_ = group_->allreduce(flag_, {collectives::ReduceOp::kMax});
  return 0;
}

namespace {

// VAR=RANK:STEP: STEP when RANK is this rank (and, for drills that must not repeat in the job a
// restart resumes, on its first attempt only).
std::optional<int64_t> step_for_rank(const char* var, int rank, bool first_attempt_only) {
  int64_t r = -1, step = -1;
  if (!env::integer_pair(var, "RANK:STEP", r, step) || r != rank) return std::nullopt;
  if (first_attempt_only && env::integer(env::kRestartCount, 0, 0, INT32_MAX) != 0)
    return std::nullopt;
  return step;
}

}  // namespace

std::optional<int64_t> kill_at_step(int rank) {
  return step_for_rank(env::kKillAtStep, rank, true);
}

std::optional<int64_t> kill_in_checkpoint(int rank) {
  return step_for_rank(env::kKillInCheckpoint, rank, true);
}

std::optional<int64_t> stop_at_step(int rank) {
  return step_for_rank(env::kTestStopAtStep, rank, false);
}

std::optional<int64_t> skip_collective_at_step(int rank) {
  return step_for_rank(env::kTestSkipCollective, rank, false);
}

int64_t step_delay_ms(int rank) {
  int64_t r = -1, ms = 0;
  if (!env::integer_pair(env::kTestStepDelayMs, "RANK:MS", r, ms)) return 0;
  return r == rank ? ms : 0;
}

}  // namespace cohort::trainer
