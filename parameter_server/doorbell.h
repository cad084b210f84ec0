// The step's calls of a worker to a parameter server on its own node, through shared memory
// instead of gRPC: one request and its reply in a small segment, announced by futex wakes. The
// data already moves through the worker's data segment (shard.h); what gRPC still cost there was
// its round trip through its own threads, about 0.4 ms a step on a 2-core node, more than the
// step's copies of a 2.7 MB model. A doorbell costs two wakes.
//
// The server creates the segment only for a worker that authenticated over gRPC (Attach), and the
// name is unlinked as soon as the worker has mapped it, so only that worker can ring. Everything
// else (authentication, initialisation, heartbeats, leaving) stays on gRPC. Each side watches
// the other's pid while it waits, as the cpu backend does for its shared-memory peers: a worker
// that exits cancels its call, a server that exits fails it as UNAVAILABLE, and the worker
// reconnects over gRPC as it would after a broken channel.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include <grpcpp/support/status_code_enum.h>

#include "collectives/shared_memory.h"

namespace cohort::ps {

enum class DoorbellCall : int32_t {
  kPushThenPull = 1,   // apply the push left in the data segment, then pull step + 1 into it
  kPull = 2,           // pull step `step` into the data segment
  kPushThenAdmit = 3,  // as kPushThenPull, but the worker copies the shared values itself
};

struct DoorbellRequest {
  DoorbellCall call = DoorbellCall::kPull;
  int64_t step = 0;
  double lr = 0;
  int64_t samples = 0;
  int64_t timeout_ms = 0;  // how long the server may wait for the mode's rule
};

// What the gRPC call would have answered: its status, and PushReply's fields.
struct DoorbellReply {
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
  int64_t version = 0, samples = 0;
  bool pulled = false;
};

struct DoorbellBlock;  // the segment's layout (doorbell.cc)

// The server's end for one worker: a thread answering its requests until destroyed.
class DoorbellServer {
 public:
  // `cancelled` becomes true once the worker gave up on the request or exited, or the server is
  // stopping; a handler that waits polls it. Exceptions from the handler become INTERNAL.
  using Handler =
      std::function<DoorbellReply(const DoorbellRequest&, const std::function<bool()>& cancelled)>;
  // Creates the segment `name` ("/...") and starts answering. Throws DistributedError.
  DoorbellServer(std::string name, Handler handle);
  // Fails the worker's call in progress or next as UNAVAILABLE, then joins the thread (after the
  // request being handled, which sees `cancelled`).
  ~DoorbellServer();
  DoorbellServer(const DoorbellServer&) = delete;
  DoorbellServer& operator=(const DoorbellServer&) = delete;

  const std::string& name() const { return name_; }

 private:
  void serve();
  bool worker_gone() const;

  std::string name_;
  Handler handle_;
  collectives::Mapping mapping_;
  DoorbellBlock* block_ = nullptr;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: started once the rest exists
};

// The worker's end. One call at a time: ring, then wait for its reply before the next ring. A
// worker with several servers rings them all before waiting for any.
class DoorbellClient {
 public:
  // Maps the segment the server created, and unlinks its name. Throws DistributedError.
  explicit DoorbellClient(const std::string& name);
  DoorbellClient(const DoorbellClient&) = delete;
  DoorbellClient& operator=(const DoorbellClient&) = delete;

  // Hands the request to the server, which starts on it at once.
  void ring(const DoorbellRequest& req);
  // The reply to the last ring, waited for at most `timeout`, then DEADLINE_EXCEEDED (and the
  // server is told to give up); UNAVAILABLE when the server stopped serving this worker or exited.
  DoorbellReply wait(std::chrono::milliseconds timeout);
  DoorbellReply call(const DoorbellRequest& req, std::chrono::milliseconds timeout) {
    ring(req);
    return wait(timeout);
  }

 private:
  bool server_gone() const;

  collectives::Mapping mapping_;
  DoorbellBlock* block_ = nullptr;
  uint32_t rung_ = 0;  // the request the next wait() answers
  bool gone_ = false;  // the server was gone at the ring
};

}  // namespace cohort::ps
