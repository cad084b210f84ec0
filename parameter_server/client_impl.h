// Internal to the parameter-server client (client.h): PsWorker's implementation, whose parts
// live in client.cc (connecting, pulling, steps, heartbeats), client_push.cc (gradients to the
// servers: gRPC streams and doorbells) and client_shared_memory.cc (the data path to a server on
// the same node).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "parameter_server/client.h"
#include "parameter_server/connection.h"
#include "parameter_server/doorbell.h"
#include "parameter_server/ps.grpc.pb.h"
#include "parameter_server/transport.h"

namespace cohort::ps {

namespace client_detail {

using Clock = std::chrono::steady_clock;
using detail::check;
using detail::Connection;
using detail::RpcError;

inline wire::Encoding encoding_of(Compression c) {
  return c == Compression::kBFloat16 ? wire::BFLOAT16 : wire::FLOAT32;
}

}  // namespace client_detail

// libcohort_grpc.so's WorkerTransport (transport.h): what PsWorker does.
class GrpcWorker final : public WorkerTransport {
 public:
  using Connection = detail::Connection;
  GrpcWorker(std::vector<core::Tensor> params, const std::vector<std::string>& names,
             ClientOptions o);

  ~GrpcWorker() override;

  void pull(int64_t step) override;

  // pull()'s general case, on c's thread: servers over gRPC, and any call to be retried.
  void pull_from(Connection& c, int64_t step);

  // Reads a pull's chunks from connection c's server into where(piece), checking that every piece
  // of ours it holds arrived.
  void read_values(Connection& c, grpc::ClientReader<wire::Chunk>& reader, int64_t step,
                   const std::function<float*(const Piece&)>& where);

  // The next step's pull over gRPC, sent by begin_step beside the push (pull_with_push) on each
  // connection's second thread: the server sends each block of the values once the push has
  // been applied to it (Shard::stream_after_push). They land in a staging copy: the parameters
  // are read by this step's backward, and may be read by evaluation and checkpoints, until
  // pull() moves them in. One attempt, without reconnecting (the connection's own thread does
  // that): when it fails, pull() fetches the values the usual way.
  void start_prefetch(int64_t step);

  // True when c's prefetched values of `step` arrived and are now the parameters'.
  bool take_prefetch(Connection& c, int64_t step);

  // Ends every prefetch still running (the step failed: its push may never come).
  void cancel_prefetches();

  void begin_step(int64_t step, double lr, int64_t samples, bool during_backward) override;

  void push_all() override;

  StepResult finish_step() override;

  void leave() override;

  const std::vector<Piece>& pieces() const override { return pieces_; }
  int64_t bytes_per_step() const override;

 private:
  const Piece* find_piece(const std::string& key, int server) const;

  void run_everywhere(const std::function<void(Connection&)>& fn);

  // Waits for every future, then rethrows the first failure.
  static void wait_all(std::vector<std::future<void>>& fs);

  // Runs `call` on connection `c`, reconnecting (and redefining our pieces there) while the
  // server is away, until the timeout. Runs on c's thread.
  void with_retries(Connection& c, const std::string& what, const std::function<void()>& call,
                    bool reconnect_first = false);

  // Defines this worker's pieces on c's server with the current parameter values.
  void init(Connection& c);

  // Copies c's server's shared values into the parameters; false when an update ran meanwhile (or
  // the values were replaced), and the parameters may then hold a mixture.
  bool copy_from_values(Connection& c);

  // (Never into a parameter that views the shared values: this worker never writes those.)
  void copy_from_segment(Connection& c);

  // alias_values: once c's server has admitted this worker, the parameters it holds whole become
  // views of its shared values. Not before the first pull, so that what the worker writes into
  // its parameters until then (a checkpoint it resumes from) stays its own.
  void alias(Connection& c);

  // Gives the parameters that view c's server's values memory of their own, holding what they
  // show now: a copy under the values' sequence lock, taken once no update is writing and again
  // if one landed meanwhile. Values that stay odd for 10 ms were retired by a new layout (or
  // their server died mid-update): the copy then stands as it is. The mapping stays valid while
  // the views hold it, even after the server has gone.
  void unalias(Connection& c);

  // Asks a server for the shared-memory data path; a server on another node (or a segment this
  // process cannot open) leaves the connection on gRPC.
  void attach(Connection& c);

  void on_gradient(size_t i);

  // Queues the gradient of parameter i (zeros when it has none) to the servers holding it.
  void send_param(size_t i);

  void write_piece(Connection& c, size_t p, const core::Tensor& grad);

  // Opens the push's stream; through shared memory, the call waits for finish_push.
  void open_push(Connection& c);

  void start_push(Connection& c, bool shared);

  // The step's push through c's doorbell, in two halves so that a worker rings all its servers
  // before it waits for any: ring_push, then pushed for the status.
  void ring_push(Connection& c);
  grpc::Status pushed(Connection& c);

  grpc::Status finish_push(Connection& c);

  // A call through c's doorbell, answered as gRPC would (PushReply's fields in c.push_reply).
  grpc::Status ring(Connection& c, DoorbellRequest req);
  // The reply to c's doorbell's last ring. The server may wait up to the timeout for the mode's
  // rule; its reply gets a little longer to arrive, so that a server-side timeout reaches us with
  // its message naming the late workers.
  grpc::Status answer(Connection& c);

  // Ends the streamed push; if it broke (the server went away), pushes the step again whole.
  int64_t close_push(Connection& c) { return settle_push(c, finish_push(c)); }
  // The rest of close_push, given how the push ended: the samples, or the push again whole (on
  // c's thread).
  int64_t settle_push(Connection& c, const grpc::Status& s);

  void heartbeats();

  std::vector<core::Tensor> params_;
  ClientOptions o_;
  std::string node_;  // node_identity(), sent when asking a server for shared memory
  std::vector<Piece> pieces_;
  std::vector<char> aliased_;  // per piece: its parameter views its server's shared values
  std::vector<std::vector<size_t>> of_param_;
  std::vector<std::unique_ptr<Connection>> conns_;
  std::vector<int> hooks_;
  std::vector<char> sent_;
  std::vector<std::vector<float>> prefetch_;  // per piece: start_prefetch's staging
  std::atomic<bool> streaming_{false};
  std::atomic<int64_t> step_{0};
  double lr_ = 0;
  int64_t samples_ = 0;
  std::thread heartbeat_;
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
  bool hb_stop_ = false;
};

}  // namespace cohort::ps
