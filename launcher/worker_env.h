// Who this worker is: rank, world size and where the rendezvous store lives, read from Cohort's
// own variables (set by `cohort launch`), torchrun's, Open MPI's (mpirun) or Slurm's (srun), in
// that order: under mpirun inside an sbatch job every rank sees SLURM_PROCID=0, so MPI's win.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "collectives/store/store.h"

namespace cohort::launcher {

struct WorkerEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  // "host:port" of a TcpStore, or "file:PATH" for a FileStore; empty for a single process.
  std::string store;
  // Keys of this job live under this prefix (COHORT_STORE_PREFIX; `cohort launch` gives each
  // restart attempt its own).
  std::string store_prefix;
  int restart_count = 0;  // COHORT_RESTART_COUNT
  // True when this rank must host the TcpStore itself (torchrun-style MASTER_ADDR/MASTER_PORT
  // without an agent): rank 0 serves.
  bool host_store = false;
  // Where a hosting rank listens: "127.0.0.1" when every rank runs on this node, else "" (every
  // interface; the name the others use may resolve differently here).
  std::string store_bind = "127.0.0.1";
  // True under mpirun with no store address: the store is found through MPI itself (rank 0 hosts
  // it and broadcasts its address).
  bool store_through_mpi = false;
  std::string source;  // which convention the values came from, for messages
  // Under srun: "JOBID.STEPID". The store's port is derived from the job id, so another job on the
  // same node may hold it; rank 0 records this job in its store and the others check it.
  std::string job_id;
  bool slurm = false;  // job_id is Slurm's
};

struct HostPort {
  std::string host;
  uint16_t port = 0;
};
// Splits "host:port" at its last colon. Throws ConfigError quoting `text` as `what` (e.g. "store
// address", "--rdzv-endpoint") when it has no host or no port in 1..65535; `other_forms` names
// what else would have been accepted (" or file:PATH").
HostPort parse_host_port(const std::string& text, const std::string& what,
                         const char* other_forms = "");

// An environment variable's value; null when unset or empty.
const char* var(const char* name);
// A non-negative integer from the environment, or `fallback` when unset; ConfigError naming the
// variable when it is anything else.
int int_var(const char* name, int fallback);

// Throws ConfigError naming the variable when one is malformed.
WorkerEnv detect_worker_env();
// Opens the store as a worker. A TcpStore needs the job's token: COHORT_TOKEN or COHORT_TOKEN_FILE
// (cohort launch sets the first), else under srun and torchrun-style variables one derived from
// the user's key file and the job (collectives/store/token.h); AuthError when there is none.
std::shared_ptr<collectives::Store> connect_store(const WorkerEnv& env,
                                                  collectives::Millis timeout);

}  // namespace cohort::launcher
