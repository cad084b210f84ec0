// The parameter-server roles of the `cohort` executable: `cohort ps CONFIG` (or `cohort train`
// started by `cohort launch --ps-servers` with COHORT_ROLE=server) serves one shard until SIGTERM
// or SIGINT; a worker's options for reaching the servers come from the same environment.
//   COHORT_ROLE            worker | server
//   COHORT_PS_SERVERS      servers in the job
//   COHORT_PS_SERVER_RANK  this server's index
//   COHORT_PS_SECRET       the job's secret (64 hex digits); never on the wire
//   COHORT_PS_BIND         the address a server listens on (this node's, as the launcher sees it)
#pragma once

#include <memory>
#include <string>

#include "collectives/store/store.h"
#include "launcher/worker_env.h"
#include "parameter_server/client.h"
#include "trainer/config.h"

namespace cohort::launcher {

// "worker" unless COHORT_ROLE says "server"; ConfigError for anything else.
std::string process_role();

struct PsServeOptions {
  int index = -1;    // -1: COHORT_PS_SERVER_RANK
  int workers = 0;   // 0: COHORT_WORLD_SIZE
  int port = 0;      // 0: a free port
  std::string bind;  // empty: parameter_server.bind, COHORT_PS_BIND, then 127.0.0.1
};

// Serves until SIGTERM or SIGINT, then writes a last checkpoint; returns the exit code. Publishes
// its address in the job's store (COHORT_STORE) as ps/server/<index>.
int serve_parameter_server(const trainer::Config& c, const PsServeOptions& o);

// How worker `env.rank` reaches the job's servers through `store`.
ps::ClientOptions ps_client_options(const trainer::Config& c, const WorkerEnv& env,
                                    std::shared_ptr<collectives::Store> store);

}  // namespace cohort::launcher
