// `cohort slurm submit CONFIG`: writes an sbatch script that runs one srun task per rank of
// `cohort train CONFIG` (workers find their rank and store from Slurm's variables), submits it and
// prints the job id; --dry-run prints the script instead. Before the time limit Slurm sends
// SIGUSR1; the trainer checkpoints and exits 138, and the script requeues the job, which resumes
// (checkpoint.resume=auto).
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

struct SlurmSubmitOptions {
  std::string config;                  // the experiment's YAML
  std::vector<std::string> overrides;  // key.path=value, passed on to cohort train
  int nodes = 1;
  int ntasks_per_node = 1;
  std::string partition, time;  // empty: the cluster's defaults
  int gpus_per_node = 0;
  bool dry_run = false;
  std::string cohort_binary;  // the absolute path of this executable
};

// The sbatch script. Validates the config first (ConfigError names the key), so that a bad config
// fails here rather than in the queue.
std::string sbatch_script(const SlurmSubmitOptions& o);

// Writes the script to <logging.dir>/slurm-submit.sbatch and runs `sbatch --parsable` on it
// (prints the job id), or prints the script with dry_run. Returns the exit code.
int slurm_submit(const SlurmSubmitOptions& o);

}  // namespace cohort::launcher
