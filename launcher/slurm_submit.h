// `cohort slurm submit CONFIG`: writes an sbatch script that runs one srun task per rank of
// `cohort train CONFIG` (workers find their rank and store from Slurm's variables), submits it and
// prints the job id; --dry-run prints the script instead. Before the time limit Slurm sends
// SIGUSR1; the trainer checkpoints and exits 138, and the script requeues the job, which resumes
// (a requeue keeps the job id, the run's id). Output lines carry their rank (srun --label).
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
  // CPUs per task; 0: the config's `threads`, or (threads 0) the node's cores shared by its tasks
  // as Slurm sees them (left to Slurm).
  int cpus_per_task = 0;
  std::string account, qos, mem, constraint;  // empty: the cluster's defaults
  std::vector<std::string> sbatch_args;       // passed to sbatch as written ("--exclusive")
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
