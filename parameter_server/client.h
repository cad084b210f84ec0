// The worker's side of parameter-server training. A PsWorker places the model's parameters on
// the servers (partition.h), authenticates to each, defines its pieces there (the first worker's
// values win), and then per step: pull() waits for the mode's rule and copies the current values
// into the parameters; gradients are pushed per parameter from autograd hooks while backward goes
// on with earlier layers; finish_step() waits for every server's acknowledgement. Each server has
// a thread of its own, so the servers are talked to in parallel. A server that restarts is found
// again (resolve), re-authenticated and re-initialised, and the call is retried, all within the
// timeout.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/store/store.h"
#include "core/tensor/tensor.h"
#include "parameter_server/codec.h"
#include "parameter_server/partition.h"

namespace cohort::ps {

struct ClientOptions {
  int servers = 1;
  // The address ("host:port") of server i now; called again after a connection fails, so it can
  // read a restarted server's new address (from the store). Blocks until known or throws.
  std::function<std::string(int server)> resolve;
  std::string secret;
  int worker = 0;
  Compression compression = Compression::kNone;
  collectives::Millis timeout{300000};  // bounds every wait, reconnections included
  double heartbeat_s = 1;
  int64_t min_slice_bytes = 256 << 10;
  // A server on this node is reached through shared memory (gradients and values; gRPC carries
  // only the calls); false keeps every byte on gRPC (parameter_server.transport: grpc).
  bool shared_memory = true;
  // Each step's pull from a server over gRPC is sent beside its push, and the server sends each
  // block of the values as soon as the push has been applied to it (sync: every worker's push,
  // async and bounded: this worker's), so the values travel back while later gradients still
  // arrive and both directions of the link carry data at once. The values are those a pull
  // after the push would get. false: the pull follows the push.
  bool pull_with_push = true;
  // A parameter that a sync-mode server on this node holds whole becomes a view of that server's
  // shared values instead of a copy of them, so a pull copies nothing. Only sound where the values
  // cannot change while a worker computes with them: in sync mode the update waits for every live
  // worker's push. The mode is the server's, from its reply when the worker authenticates: the
  // worker's own config does not decide it. (A worker that was dropped as dead but still computes
  // may see an update land; its gradient then mixes two steps' values, as an async worker's
  // staleness would.) leave() and the worker's destruction give the parameters their own memory
  // back.
  bool alias_values = false;
};

struct StepResult {
  int64_t samples = 0;  // samples every worker has pushed so far (the first server's count)
};

class PsWorker {
 public:
  // Connects, authenticates and defines the pieces on every server (blocking). Throws
  // DistributedError naming the server when it refuses this worker or cannot be reached within
  // the timeout.
  PsWorker(std::vector<core::Tensor> params, const std::vector<std::string>& names,
           ClientOptions o);
  ~PsWorker();
  PsWorker(const PsWorker&) = delete;
  PsWorker& operator=(const PsWorker&) = delete;

  // Blocks until every server admits step `step`, then the parameters hold its values, which
  // include every push this worker has finished (a pull sent beside the last push was waiting
  // for it).
  void pull(int64_t step);
  // Opens the step's pushes. With `during_backward`, each parameter's gradient is sent as soon as
  // autograd has accumulated it; otherwise push_all() sends them (after clipping, say).
  void begin_step(int64_t step, double lr, int64_t samples, bool during_backward);
  void push_all();
  // Sends what is left (a parameter without a gradient sends zeros) and waits for every server.
  StepResult finish_step();
  // Tells the servers this worker has finished (it no longer holds back sync steps).
  void leave();
  const std::vector<Piece>& pieces() const;
  int64_t bytes_per_step() const;  // pushed (and pulled) per step, on the wire

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cohort::ps
