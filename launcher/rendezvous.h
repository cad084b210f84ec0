// How the agents of one `cohort launch` job meet (launch.cc): node 0 hosts the job's TcpStore,
// every agent publishes its node's ranks and learns the world size and its rank offset, and for
// each attempt they post failures, heartbeats, completion and departure there. Internal to the
// launcher.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "collectives/store/tcp_store.h"
#include "collectives/store/token.h"
#include "launcher/launch.h"

namespace cohort::launcher {

class Rendezvous {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Rendezvous(const LaunchOptions& o);

  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }

  // The workers' MASTER_PORT for `attempt`: a free port of node 0 that PyTorch's own TCPStore
  // binds (rank 0) and joins (the others). Not the rendezvous store's port, which Cohort holds.
  // Node 0 picks it; the other nodes read it from the store.
  std::string master_port(int attempt);

  // Parameter-server mode: the job's secret (COHORT_PS_SECRET if the user set one, else derived
  // from the job's token on every node alike: never published in the store).
  std::string ps_secret() const;
  // What the workers get in COHORT_TOKEN: the worker part, which cannot act as an agent.
  std::string worker_token() const { return token_.worker().to_text(); }
  std::string local_address() const;
  int world_size() const { return world_; }
  int rank_offset() const { return offset_; }

  // Posts this node's failure for `attempt` unless another node posted first.
  void post_failure(int attempt, const std::string& text);
  void post_done(int attempt) { store_->set(key(attempt, "done/" + node()), "1"); }
  bool all_done(int attempt);

  // Before this agent exits: says so, and on node 0, whose store the others still read, waits
  // (bounded) until they have said so too. Never throws.
  void leave(int attempt);

  // Called every monitor interval: beats for this node and returns what went wrong elsewhere
  // for `attempt` (empty when nothing): a failure another node posted, an agent whose heartbeat
  // stopped, or the store itself gone.
  std::string check(int attempt);

 private:
  std::string node() const { return std::to_string(o_.node_rank); }
  static std::string key(int attempt, const std::string& what);

  // COHORT_TOKEN or COHORT_TOKEN_FILE when set (it must be the job's token, not a worker's);
  // else a fresh one for a one-node job, and for several nodes one that every agent derives
  // alike from the user's key file and the rendezvous (endpoint and --rdzv-id).
  static collectives::JobToken job_token(const LaunchOptions& o);

  const LaunchOptions& o_;
  collectives::JobToken token_;
  std::unique_ptr<collectives::TcpStoreServer> server_;
  std::shared_ptr<collectives::Store> store_;
  std::string host_;
  uint16_t port_ = 0;
  int world_ = 0, offset_ = 0;
  std::vector<std::pair<int64_t, Clock::time_point>> last_beat_;
  Clock::time_point next_beat_{};
};

}  // namespace cohort::launcher
