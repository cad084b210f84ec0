// How the agents of one `cohort launch` job meet and watch each other through the job's store, in
// rounds: a round is one run of the workers (the first start, and each restart after a failure or
// a change of membership). Every call costs an agent a constant number of store operations,
// however many agents there are; only the host (the agent that holds the store) does work in
// proportion to them, once per round.
//
// A round R, keys under the caller's prefix:
//   r<R>/open       the host opened it (after counting itself in as arrival 0)
//   r<R>/count      arrivals (add): an agent's arrival index is the count it made
//   r<R>/info/<i>   arrival i's requested node rank, its workers and its label
//   r<R>/closed     set by the host: how many arrivals are in (later ones wait for the next
//                   round), or "error: ..." when the agents do not fit together
//   r<R>/assign/<i> arrival i's node rank, node count, world size and first global rank
//   r<R>/beat/<i>   arrival i's heartbeat (add); arrival i watches arrival i+1's only
//   r<R>/failed     the first failure anyone posted (compare_set)
//   r<R>/done, r<R>/left   counters of agents whose workers finished, and that are leaving
//   finished        the job is over (for agents still waiting to join)
//   batch_world     the world size of the first round, which data.batch_size was given for
// The host closes a round when max_nodes have arrived, or min_nodes and then last_call_s passed
// without reaching max_nodes (elastic: --nnodes MIN:MAX; fixed: MIN = MAX and node ranks come
// from --node-rank). Elastic node ranks follow arrival order, the host's first.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "collectives/store/store.h"

namespace cohort::launcher {

struct RendezvousSettings {
  int min_nodes = 1, max_nodes = 1;
  bool elastic = false;    // node ranks follow arrival order (else each agent's node_rank)
  int node_rank = 0;       // fixed: this agent's --node-rank
  int nproc = 1;           // this agent's workers
  bool host = false;       // opens and closes rounds (the agent that holds the store)
  double timeout_s = 300;  // for enough agents to arrive, and for a round to open
  double last_call_s = 3;  // elastic: once min_nodes are in, how long others may still join
  double heartbeat_s = 1;  // how often an agent beats and looks at its neighbour's beat
  double heartbeat_timeout_s = 30;
  double failure_poll_s = 0.25;  // how often an agent looks for a failure posted elsewhere
  std::string label;             // this agent's host name, for messages about it
};

struct Membership {
  int round = 0;
  int index = 0;      // arrival order in the round: its heartbeat slot
  int node_rank = 0;  // this node's rank in the round
  int nnodes = 0;
  int world = 0;
  int rank_offset = 0;  // its first worker's global rank
  int batch_world = 0;  // the first round's world size
};

class AgentRendezvous {
 public:
  using Clock = std::chrono::steady_clock;
  AgentRendezvous(std::shared_ptr<collectives::Store> store, RendezvousSettings settings);

  // Joins round `round` (the host opens it) and waits until the host closes it. nullopt: it
  // closed without this agent, which arrived late (await_round for the next one). Throws
  // ConfigError when too few agents come within timeout_s or the agents do not fit together.
  std::optional<Membership> join(int round);
  // Waits until round `round` opens (returns true) or the job finishes (false); polls twice a
  // second, up to `timeout_s` (TimeoutError).
  bool await_round(int round, double timeout_s);

  // Within the joined round. check() is cheap to call often: it does its store work at its own
  // cadence and returns what went wrong elsewhere ("" when nothing): a posted failure, or the
  // neighbour's heartbeat gone.
  std::string check();
  // Posts this agent's failure unless another was posted first. Never throws.
  void post_failure(const std::string& text);
  void post_done();
  bool all_done();
  // The host: agents waiting for the next round (arrived after this one closed).
  int pending_joiners();
  // The host: the job is over; agents still waiting to join stop waiting.
  void post_finished();
  // Before exiting: says so; the host, whose store the others still use, waits (bounded) until
  // every agent of the round has said so too. Never throws.
  void leave();
  // The host sets and the others read the round's value of `what` (the workers' MASTER_PORT).
  void publish(const std::string& what, const std::string& value);
  std::string read(const std::string& what);

  const Membership& membership() const { return m_; }
  const RendezvousSettings& settings() const { return s_; }
  // Store operations this agent made, for `cohort bench rendezvous`.
  int64_t operations() const { return ops_; }

 private:
  std::string key(const std::string& what) const;
  std::string key(int round, const std::string& what) const;
  // The host: opens the round, waits for arrivals, closes it and assigns node ranks.
  void host_round(int round);
  std::chrono::milliseconds timeout() const;

  std::shared_ptr<collectives::Store> store_;
  RendezvousSettings s_;
  Membership m_;
  int joined_ = -1;  // the round `m_` describes (-1: none)
  int64_t ops_ = 0;
  Clock::time_point next_beat_{}, next_failure_poll_{};
  int64_t neighbour_beat_ = -1;
  Clock::time_point neighbour_seen_{};
};

}  // namespace cohort::launcher
