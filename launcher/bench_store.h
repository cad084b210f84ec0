// `cohort bench store`: the rendezvous store under load and under attack, and what authentication
// costs a connection. A child process hosts the server, as the launcher does, so that its memory
// and descriptors can be watched from outside. Honest clients (threads, each on its own
// connection with the job's token) run the same operations for --seconds alone, then as long again
// beside --attackers threads that send garbage, 1 GiB length prefixes and idle connections without
// the token, and abandoned waits with a worker's token. Prints honest operations/s of both phases
// and their ratio, honest errors, keys lost, and the server's RSS and descriptors before, at the
// peak of, and after the attack. scripts/bench/store.sh runs it.
#pragma once

namespace cohort::launcher {

struct BenchStoreOptions {
  int clients = 256;
  int attackers = 64;
  double seconds = 30;
  int connects = 1000;  // sequential connections timed with and without the handshake
};

// Returns 0, or 1 when an honest operation failed or a key was lost.
int bench_store(const BenchStoreOptions& o);

}  // namespace cohort::launcher
