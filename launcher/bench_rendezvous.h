// `cohort bench rendezvous --agents N`: N simulated agents (threads, each with its own connection
// and the job's token) speak the launcher's rendezvous protocol (rendezvous_protocol.h) to a real
// store, hosted as `cohort launch` hosts it (its limits sized for N nodes). Phases, each timed
// from its start until every agent is through it: connect (the handshake), rendezvous (a round
// opened, joined and closed), heartbeats (every agent supervising for --beat-seconds at the
// launcher's cadence) and a failure broadcast (one agent posts a failure; until the last agent has
// seen it). Prints each phase's seconds, the store operations it took per agent and the store's
// operations per second, and the failure broadcast's latency.
#pragma once

namespace cohort::launcher {

struct BenchRendezvousOptions {
  int agents = 256;
  double beat_seconds = 3;
  double heartbeat_s = 1;
  double failure_poll_s = 0.25;
};

// Returns 0, or 1 when an agent failed or saw a failure that was not posted.
int bench_rendezvous(const BenchRendezvousOptions& o);

}  // namespace cohort::launcher
