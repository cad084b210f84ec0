// How the agents of one `cohort launch` job meet (launch.cc): node 0 hosts the job's TcpStore, and
// the agents meet there in rounds (rendezvous_protocol.h): each round, every agent learns the
// world size, its node rank and its first global rank, and posts failures, heartbeats, completion
// and departure. Internal to the launcher.
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
#include "launcher/rendezvous_protocol.h"

namespace cohort::launcher {

// The store's limits for a job of `nnodes` nodes with `per_node` connections each (its workers,
// parameter servers and agent): every one of them holds a connection, and the agents connect at
// once.
collectives::TcpStoreLimits rendezvous_store_limits(int nnodes, int per_node);

class Rendezvous {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Rendezvous(const LaunchOptions& o);

  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }

  // Joins round `round` (rendezvous_protocol.h). False: this agent arrived after the round closed
  // (an elastic job already running): wait for the next with await_round.
  bool join(int round);
  // Waits until round `round` opens; false when the job finished first.
  bool await_round(int round) { return agent_->await_round(round, 365.0 * 24 * 3600); }

  // The workers' MASTER_PORT for the round: a free port of node 0 that PyTorch's own TCPStore
  // binds (rank 0) and joins (the others). Not the rendezvous store's port, which Cohort holds.
  // Node 0 picks it; the other nodes read it from the store.
  std::string master_port();

  // Parameter-server mode: the job's secret (COHORT_PS_SECRET if the user set one, else derived
  // from the job's token on every node alike: never published in the store).
  std::string ps_secret() const;
  // What the workers get in COHORT_TOKEN: the worker part, which cannot act as an agent.
  std::string worker_token() const { return token_.worker().to_text(); }
  std::string local_address() const;
  const Membership& membership() const { return agent_->membership(); }
  int world_size() const { return membership().world; }
  int rank_offset() const { return membership().rank_offset; }
  int node_rank() const { return membership().node_rank; }
  int nnodes() const { return membership().nnodes; }
  bool elastic() const { return agent_->settings().elastic; }

  // Posts this node's failure for the round unless another node posted first.
  void post_failure(const std::string& text) { agent_->post_failure(text); }
  void post_done() { agent_->post_done(); }
  bool all_done() { return agent_->all_done(); }
  // The job is over: agents waiting to join an elastic job stop waiting.
  void post_finished() { agent_->post_finished(); }

  // Before this agent exits: says so, and on node 0, whose store the others still read, waits
  // (bounded) until they have said so too. Never throws.
  void leave() { agent_->leave(); }

  // --heal: tells the round's workers (cohort's trainer) that a replacement is starting, so that
  // they wait for it when they regroup (trainer/heal.h). Never throws.
  void announce_replacement();

  // Called every monitor interval: returns what went wrong elsewhere in the round ("" when
  // nothing): a failure another node posted, an agent whose heartbeat stopped, or the store
  // itself gone. On node 0 of an elastic job, also asks the workers to stop at their next
  // checkpoint when nodes wait to join (once per round).
  std::string check();

 private:
  // COHORT_TOKEN or COHORT_TOKEN_FILE when set (it must be the job's token, not a worker's);
  // else a fresh one for a one-node job, and for several nodes one that every agent derives
  // alike from the user's key file and the rendezvous (endpoint and --rdzv-id).
  static collectives::JobToken job_token(const LaunchOptions& o);

  const LaunchOptions& o_;
  collectives::JobToken token_;
  std::unique_ptr<collectives::TcpStoreServer> server_;
  std::shared_ptr<collectives::Store> raw_;  // the job's store, no prefix
  std::unique_ptr<AgentRendezvous> agent_;
  std::string host_;
  uint16_t port_ = 0;
  bool join_asked_ = false;  // node 0 asked this round's workers to make room
  Clock::time_point next_join_check_{};
};

}  // namespace cohort::launcher
