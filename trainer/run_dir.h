// One run per run directory. The leader claims logging.dir (and checkpoint.dir) with a lock for as
// long as it trains, records the run's identity in run.json (run id, start time, config hash, the
// project's git commit), and decides what the run resumes from:
//   - checkpoint.resume auto or a path: that checkpoint, after checking that the keys that give the
//     state its meaning (model, optimizer type, dataset) are unchanged; other changes are printed;
//   - checkpoint.resume unset: `auto` for a restart of this same job (cohort launch --max-restarts,
//     a Slurm requeue: the same run id), otherwise a fresh start;
//   - a fresh start into a directory that holds another run's files is refused with one sentence
//     (exit 2): runs never mix, and nothing of the other run is overwritten or pruned.
#pragma once

#include <optional>
#include <string>

#include "collectives/store/store.h"
#include "trainer/config.h"

namespace cohort::trainer {

// This job's run id: COHORT_RUN_ID (cohort launch gives every attempt of a job the same one),
// TORCHELASTIC_RUN_ID (torchrun's rdzv id), "slurm-<SLURM_JOB_ID>" (a requeue keeps it), else a
// fresh random one.
std::string job_run_id();

struct RunDecision {
  std::string run_id;                 // the run this process continues or starts
  std::optional<std::string> resume;  // the checkpoint to load, if any
};

class RunDirectory {
 public:
  // Leader only. Throws ConfigError (another live job holds the directory; another run's files;
  // a resume whose state keys changed) or IoError.
  RunDirectory(const Config& c, int world_size);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;
  const RunDecision& decision() const { return decision_; }

 private:
  void lock(const std::string& dir);
  std::vector<int> lock_fds_;
  RunDecision decision_;
};

// The leader's decision shared with the other ranks through the job's store (a key per attempt);
// the leader's refusal reaches them as a ConfigError instead of a timeout.
void publish_decision(collectives::Store& store, const std::optional<RunDecision>& d,
                      const std::string& error);
RunDecision await_decision(collectives::Store& store, std::chrono::milliseconds timeout);

// The keys whose change makes a checkpoint's state mean something else, compared between the
// checkpoint's config (YAML text) and this run's: "model.dim: 128 -> 256". `changed` receives
// the other differences, for printing.
std::vector<std::string> incompatible_changes(const std::string& checkpoint_config,
                                              const YAML::Node& current,
                                              std::vector<std::string>* changed);

}  // namespace cohort::trainer
