// One parameter server as a worker sees it (client.cc): its gRPC channel and authenticated
// session, the shared-memory data path when the server is on this node, and the thread that runs
// the worker's calls to it in order. Internal to the client.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "collectives/shared_memory.h"
#include "parameter_server/client.h"
#include "parameter_server/doorbell.h"
#include "parameter_server/ps.grpc.pb.h"
#include "parameter_server/shard.h"
#include "parameter_server/task_thread.h"

namespace cohort::ps::detail {

// A failed call. Retryable ones mean the server went away or forgot us (it restarted).
struct RpcError : std::runtime_error {
  RpcError(const grpc::Status& s, const std::string& what)
      : std::runtime_error(what + ": " + s.error_message()), code(s.error_code()) {}
  grpc::StatusCode code;
  bool retryable() const {
    return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::UNAUTHENTICATED ||
           code == grpc::StatusCode::UNKNOWN || code == grpc::StatusCode::CANCELLED;
  }
};

inline void check(const grpc::Status& s, const std::string& what) {
  if (!s.ok()) throw RpcError(s, what);
}

inline std::chrono::system_clock::time_point deadline_in(collectives::Millis t) {
  return std::chrono::system_clock::now() + t;
}

// One server: its channel and session, and a thread that runs this worker's calls to it in order.
class Connection {
 public:
  Connection(int index, const ClientOptions& o) : index_(index), o_(o) {}

  std::future<void> post(std::function<void()> task) { return thread_.post(std::move(task)); }
  // A second thread, for the next step's pull beside this step's push.
  std::future<void> post_prefetch(std::function<void()> task) {
    return prefetcher_.post(std::move(task));
  }

  // (Re)connects and authenticates. Throws RpcError (retryable when the server is not there yet)
  // or DistributedError when the server refuses our proof.
  void connect();

  // A context carrying the session, with a deadline.
  std::unique_ptr<grpc::ClientContext> context(collectives::Millis timeout) {
    auto c = std::make_unique<grpc::ClientContext>();
    std::lock_guard<std::mutex> lock(session_mu_);
    c->AddMetadata("cohort-session", session_);
    c->set_deadline(deadline_in(timeout));
    return c;
  }
  wire::ParameterServer::Stub& stub() {
    std::lock_guard<std::mutex> lock(session_mu_);
    return *stub_;
  }
  // For threads other than the connection's: keeps the stub alive across a reconnection there.
  std::shared_ptr<wire::ParameterServer::Stub> shared_stub() {
    std::lock_guard<std::mutex> lock(session_mu_);
    return stub_;
  }
  bool connected() {
    std::lock_guard<std::mutex> lock(session_mu_);
    return stub_ != nullptr;
  }
  std::string name() const { return std::to_string(index_); }
  // The mode the server reported when this worker authenticated.
  Mode mode() {
    std::lock_guard<std::mutex> lock(session_mu_);
    return mode_;
  }
  int index() const { return index_; }

  // The shared-memory data path to this server when it is on our node (set by attach; used on
  // this connection's thread only): gradients go to [0, floats), values come from [floats, 2x).
  // Shared: tensors viewing the segment (gradient destinations) keep it mapped.
  std::shared_ptr<collectives::Mapping> segment;
  int64_t segment_floats = 0;
  std::vector<int64_t> segment_offset;  // per piece of the worker's; -1: not on this server
  bool shared() const { return segment && *segment; }
  // The step's calls through shared memory too, when the server offered it.
  std::unique_ptr<DoorbellClient> doorbell;
  // Data and calls both through shared memory: the worker's own thread rings the doorbell and
  // copies, with no hop through this connection's thread (each hop is a thread to wake, tens of
  // microseconds on a busy node). The connection's thread still reconnects when a call fails.
  bool local() const { return shared() && doorbell != nullptr; }
  // The tasks the worker posted to this connection's thread and has not yet waited for (touched
  // by the worker's thread only). While any is unfinished, only that thread touches the rest.
  std::vector<std::future<void>> queued;
  // The server's parameters, shared by its workers on this node (Shard::SegmentLayout), and the
  // step the server last admitted this worker to without copying them into the segment.
  std::shared_ptr<collectives::Mapping> values;
  int64_t admitted = -1;
  int64_t prefetched = -1;  // the step whose values the last push left in the segment
  bool aliased = false;     // its whole pieces' parameters view `values` (alias_values)
  float* segment_grad(size_t piece) {
    return static_cast<float*>(segment->addr()) + segment_offset[piece];
  }
  float* segment_values(size_t piece) { return segment_grad(piece) + segment_floats; }

  // A pull running on the prefetch thread beside the step's push (ClientOptions::pull_with_push),
  // until the worker's pull() takes it: its step, its end, and its context (to cancel it).
  int64_t prefetch_step = -1;
  std::future<void> prefetch_done;
  void set_prefetch_context(std::unique_ptr<grpc::ClientContext> c) {
    std::lock_guard<std::mutex> lock(prefetch_mu_);
    prefetch_ctx_ = std::move(c);
  }
  void cancel_prefetch() {
    std::lock_guard<std::mutex> lock(prefetch_mu_);
    if (prefetch_ctx_) prefetch_ctx_->TryCancel();
  }

  // The push in progress (used on this connection's thread only).
  std::unique_ptr<grpc::ClientContext> push_ctx;
  std::unique_ptr<grpc::ClientWriter<wire::PushMessage>> push_writer;
  wire::PushReply push_reply;
  bool push_broken = false;

 private:
  int index_;
  const ClientOptions& o_;
  std::mutex session_mu_;
  std::shared_ptr<wire::ParameterServer::Stub> stub_;
  std::string session_, address_;
  Mode mode_ = Mode::kSync;
  std::mutex prefetch_mu_;
  std::unique_ptr<grpc::ClientContext> prefetch_ctx_;
  TaskThread prefetcher_;
  TaskThread thread_;  // last: joined first, while the rest still exists
};

}  // namespace cohort::ps::detail
