// `cohort launch`: torchrun's role on one node. Hosts the rendezvous TcpStore on a port the OS
// picks (so two jobs on one machine never collide), starts --nproc-per-node workers with the
// contract's environment, prefixes their output, and supervises them: when one fails, the others
// are stopped (SIGTERM, then SIGKILL after the grace period) and either all start again
// (--max-restarts, COHORT_RESTART_COUNT incremented) or the launcher exits with the failed worker's
// code after a summary naming its rank, pid, exit code or signal and its last lines of output.
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

struct LaunchOptions {
  int nproc_per_node = 1;
  int max_restarts = 0;
  double monitor_interval_s = 0.1;  // how often exits are checked between output
  double grace_period_s = 10;       // SIGTERM to SIGKILL when stopping workers
  std::string log_dir;              // per-rank log files instead of the console
  bool tee = false;                 // with log_dir: the console too
  std::string run_id;               // shown to workers as COHORT_RUN_ID; default: launcher pid
  std::vector<std::string> program;  // PROGRAM ARGS...
};

// Returns the launcher's exit code: 0 when every worker succeeded; else the first failed worker's
// code (128 + signal for a signal); 128 + the signal that stopped the launcher. Throws
// ConfigError for bad options or a program that cannot be executed.
int launch(const LaunchOptions& options);

}  // namespace cohort::launcher
