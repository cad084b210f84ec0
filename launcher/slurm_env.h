// Slurm's compressed lists, as found in a task's environment: host lists such as
// `n[1-3,7],m5` (SLURM_STEP_NODELIST) and task counts such as `3(x2),2` (SLURM_TASKS_PER_NODE).
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

// "n[1-3,7],m5" -> {n1, n2, n3, n7, m5}; keeps zero padding ("n[01-03]" -> n01, n02, n03) and
// expands every bracket of a name ("r[1-2]n[1-2]" -> r1n1, r1n2, r2n1, r2n2). Throws ConfigError
// naming the list when it is malformed.
std::vector<std::string> expand_hostlist(const std::string& list);

// "3(x2),2" -> {3, 3, 2}. Throws ConfigError naming the list when it is malformed.
std::vector<int> expand_tasks_per_node(const std::string& list);

// The rendezvous port of a Slurm job, the same on every node without talking: 29500 plus the job
// id modulo 10000 (so concurrent jobs on shared nodes use different ports).
int slurm_port(const std::string& job_id);

}  // namespace cohort::launcher
