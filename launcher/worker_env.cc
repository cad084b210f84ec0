#include "launcher/worker_env.h"

#include <charconv>
#include <cstdlib>
#include <cstring>

#include "collectives/mpi/mpi_process_group.h"
#include "collectives/store/file_store.h"
#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "launcher/slurm_env.h"

namespace cohort::launcher {

const char* var(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int int_var(const char* name, int fallback) {
  const char* v = var(name);
  if (!v) return fallback;
  int out = 0;
  auto [end, ec] = std::from_chars(v, v + std::strlen(v), out);
  if (ec != std::errc() || *end != '\0' || out < 0)
    COHORT_THROW(ConfigError, "environment variable ", name, "='", v,
                 "' is not a non-negative integer");
  return out;
}

HostPort parse_host_port(const std::string& text, const std::string& what,
                         const char* other_forms) {
  const size_t colon = text.rfind(':');
  int port = -1;
  if (colon != std::string::npos && colon > 0) {
    auto [end, ec] = std::from_chars(text.data() + colon + 1, text.data() + text.size(), port);
    if (ec != std::errc() || end != text.data() + text.size()) port = -1;
  }
  if (port <= 0 || port > 65535)
    COHORT_THROW(ConfigError, what, " '", text, "' is not host:port", other_forms);
  return {text.substr(0, colon), static_cast<uint16_t>(port)};
}

WorkerEnv detect_worker_env() {
  WorkerEnv e;
  if (var("COHORT_RANK") || var("COHORT_WORLD_SIZE")) {
    e.source = "COHORT_*";
    e.rank = int_var("COHORT_RANK", 0);
    e.world_size = int_var("COHORT_WORLD_SIZE", 1);
    e.local_rank = int_var("COHORT_LOCAL_RANK", e.rank);
    e.local_world_size = int_var("COHORT_LOCAL_WORLD_SIZE", e.world_size);
    if (const char* s = var("COHORT_STORE")) e.store = s;
    if (const char* s = var("COHORT_STORE_PREFIX")) e.store_prefix = s;
    e.restart_count = int_var("COHORT_RESTART_COUNT", 0);
  } else if (var("RANK") && var("WORLD_SIZE")) {
    e.source = "torchrun (RANK/WORLD_SIZE)";
    e.rank = int_var("RANK", 0);
    e.world_size = int_var("WORLD_SIZE", 1);
    e.local_rank = int_var("LOCAL_RANK", e.rank);
    e.local_world_size = int_var("LOCAL_WORLD_SIZE", e.world_size);
    const char* addr = var("MASTER_ADDR");
    const char* port = var("MASTER_PORT");
    if (e.world_size > 1 && (!addr || !port))
      COHORT_THROW(ConfigError,
                   "RANK and WORLD_SIZE are set but MASTER_ADDR or MASTER_PORT is not");
    if (addr && port) {
      e.store = std::string(addr) + ":" + port;
      e.host_store = e.rank == 0;
      e.store_bind = e.local_world_size == e.world_size ? addr : "";
      e.job_id = "torchrun " + e.store;
    }
  } else if (var("OMPI_COMM_WORLD_RANK") && var("OMPI_COMM_WORLD_SIZE")) {
    // mpirun, also inside an sbatch job, where every rank inherits SLURM_PROCID=0.
    e.source = "Open MPI (OMPI_COMM_WORLD_*)";
    e.rank = int_var("OMPI_COMM_WORLD_RANK", 0);
    e.world_size = int_var("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = int_var("OMPI_COMM_WORLD_LOCAL_RANK", e.rank);
    e.local_world_size = int_var("OMPI_COMM_WORLD_LOCAL_SIZE", e.world_size);
    if (const char* s = var("COHORT_STORE")) {
      e.store = s;
    } else if (e.world_size > 1) {
      e.store_through_mpi = true;
    }
  } else if (var("SLURM_PROCID") && (var("SLURM_STEP_NUM_TASKS") || var("SLURM_NTASKS"))) {
    // srun: one task per rank. Rank 0 runs on the first node of the step and hosts the store on
    // a port every task derives from the job id.
    e.source = "Slurm (SLURM_PROCID/SLURM_NTASKS)";
    e.rank = int_var("SLURM_PROCID", 0);
    e.world_size = var("SLURM_STEP_NUM_TASKS") ? int_var("SLURM_STEP_NUM_TASKS", 1)
                                               : int_var("SLURM_NTASKS", 1);
    e.local_rank = int_var("SLURM_LOCALID", 0);
    e.local_world_size = e.world_size;
    const char* per_node_var =
        var("SLURM_STEP_TASKS_PER_NODE") ? "SLURM_STEP_TASKS_PER_NODE" : "SLURM_TASKS_PER_NODE";
    if (const char* per_node = var(per_node_var)) {
      const auto counts = expand_tasks_per_node(per_node);
      const int node = int_var("SLURM_NODEID", 0);
      if (node < static_cast<int>(counts.size())) e.local_world_size = counts[node];
    }
    if (const char* s = var("COHORT_STORE")) {
      e.store = s;
    } else if (e.world_size > 1) {
      const char* list_var =
          var("SLURM_STEP_NODELIST") ? "SLURM_STEP_NODELIST" : "SLURM_JOB_NODELIST";
      const char* list = var(list_var);
      const char* job = var("SLURM_JOB_ID");
      if (!list || !job)
        COHORT_THROW(ConfigError,
                     "SLURM_PROCID is set but SLURM_STEP_NODELIST or SLURM_JOB_ID is "
                     "not; set COHORT_STORE=host:port");
      // Tasks on the first node reach rank 0 through loopback, which needs no name resolution.
      const std::string host =
          int_var("SLURM_NODEID", -1) == 0 ? "127.0.0.1" : expand_hostlist(list).front();
      e.store = host + ":" + std::to_string(slurm_port(job));
      e.host_store = e.rank == 0;
      e.store_bind = e.local_world_size == e.world_size ? "127.0.0.1" : "";
      e.job_id = std::string(job) + "." + (var("SLURM_STEP_ID") ? var("SLURM_STEP_ID") : "0");
      e.slurm = true;
    }
  }
  if (e.world_size < 1 || e.rank >= e.world_size)
    COHORT_THROW(ConfigError, "rank ", e.rank, " is outside the world size ", e.world_size,
                 " given by ", e.source);
  if (e.world_size > 1 && e.store.empty() && !e.store_through_mpi)
    COHORT_THROW(ConfigError, "world size ", e.world_size, " given by ", e.source,
                 " but no store address: set COHORT_STORE=host:port or file:PATH");
  return e;
}

namespace {

std::shared_ptr<collectives::Store> open_store(const WorkerEnv& env, collectives::Millis timeout) {
  if (env.store_through_mpi) return collectives::mpi::bootstrap_store(timeout);
  if (env.store.empty()) return std::make_shared<collectives::HashStore>();
  if (env.store.rfind("file:", 0) == 0)
    return std::make_shared<collectives::FileStore>(env.store.substr(5), timeout);
  const HostPort at = parse_host_port(env.store, "store address", " or file:PATH");
  collectives::TcpStoreOptions o;
  o.host = at.host;
  o.port = at.port;
  o.is_server = env.host_store;
  o.bind = env.store_bind;
  o.timeout = timeout;
  if (auto t = collectives::JobToken::from_environment()) {
    o.token = *t;
  } else if (!env.job_id.empty()) {
    o.token = collectives::JobToken::for_job((env.slurm ? "slurm " : "") + env.job_id);
  } else {
    COHORT_THROW(AuthError, "rank ", env.rank, ": the store at ", env.store,
                 " admits only this job's processes, and this one has no token: set COHORT_TOKEN "
                 "or COHORT_TOKEN_FILE (cohort launch sets COHORT_TOKEN for its workers)");
  }
  return std::make_shared<collectives::TcpStore>(std::move(o));
}

}  // namespace

std::shared_ptr<collectives::Store> connect_store(const WorkerEnv& env,
                                                  collectives::Millis timeout) {
  auto store = open_store(env, timeout);
  if (env.slurm) {
    const std::string key = "cohort/job";
    if (env.host_store) {
      store->set(key, env.job_id);
    } else if (const std::string owner = store->get(key); owner != env.job_id) {
      COHORT_THROW(DistributedError, "rank ", env.rank, ": the store at ", env.store,
                   " belongs to Slurm job ", owner, ", not to this job ", env.job_id,
                   ": another job on that node holds the port derived from the job id; set "
                   "COHORT_STORE=host:port for this job");
    }
  }
  if (env.store_prefix.empty()) return store;
  return std::make_shared<collectives::PrefixStore>(env.store_prefix, std::move(store));
}

}  // namespace cohort::launcher
