// libcohort_grpc.so: the parameter server over gRPC (transport.h).
#include "parameter_server/server.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "cohort/config.h"
#include "collectives/shared_memory.h"
#include "core/util/error.h"
#include "parameter_server/auth.h"
#include "parameter_server/client_impl.h"
#include "parameter_server/codec.h"
#include "parameter_server/doorbell.h"
#include "parameter_server/ps.grpc.pb.h"
#include "parameter_server/transport.h"

namespace cohort::ps {
namespace {

using grpc::ServerContext;
using grpc::Status;
using grpc::StatusCode;
using Clock = std::chrono::steady_clock;

constexpr int kMaxDims = 8;
constexpr int kFrameBytes = 4 << 20;
constexpr int kWindowBytes = 16 << 20;
// Sync pushes over gRPC keep within two chunks of each other (Shard::pace): a worker that raced
// ahead would leave the blocks waiting for the one behind, and the values' way back idle until
// the end. A worker is held at most this long per chunk (one that stopped is dropped later).
constexpr int64_t kPaceSlack = 2 * kChunkElements;
constexpr auto kPaceWait = std::chrono::milliseconds(20);
constexpr int64_t kMaxPieceElements = int64_t{1} << 31;
constexpr size_t kMaxPendingNonces = 1024;
constexpr auto kNonceLifetime = std::chrono::seconds(30);

Compression compression_of(wire::Encoding e) {
  return e == wire::BFLOAT16 ? Compression::kBFloat16 : Compression::kNone;
}

// Runs a handler's body, turning our exceptions into statuses the client can act on.
template <typename F>
Status guarded(F&& body) {
  try {
    return body();
  } catch (const InvalidArgument& e) {
    return Status(StatusCode::INVALID_ARGUMENT, e.what());
  } catch (const TimeoutError& e) {
    return Status(StatusCode::DEADLINE_EXCEEDED, e.what());
  } catch (const std::exception& e) {
    return Status(StatusCode::INTERNAL, e.what());
  }
}

class Service final : public wire::ParameterServer::Service {
 public:
  Service(Shard& shard, std::string secret)
      : shard_(shard),
        secret_(std::move(secret)),
        node_(collectives::node_identity()),
        push_mu_(static_cast<size_t>(shard.options().workers)) {}

  Status Challenge(ServerContext*, const wire::ChallengeRequest* req,
                   wire::ChallengeReply* reply) override {
    return guarded([&] {
      if (!valid_worker(req->worker()))
        return Status(StatusCode::INVALID_ARGUMENT, not_in_job(req->worker()));
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = Clock::now();
      std::erase_if(nonces_, [&](const auto& kv) { return kv.second.expires < now; });
      if (nonces_.size() >= kMaxPendingNonces)
        return Status(StatusCode::RESOURCE_EXHAUSTED, "too many authentications in progress");
      std::string nonce = random_bytes(32);
      nonces_[nonce] = {req->worker(), now + kNonceLifetime};
      reply->set_nonce(nonce);
      reply->set_server(shard_.options().server);
      return Status::OK;
    });
  }

  Status Authenticate(ServerContext* ctx, const wire::AuthRequest* req,
                      wire::AuthReply* reply) override {
    return guarded([&] {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = nonces_.find(req->nonce());
      const bool fresh = it != nonces_.end() && it->second.expires >= Clock::now() &&
                         it->second.worker == req->worker();
      if (it != nonces_.end()) nonces_.erase(it);  // a nonce is answered once, right or wrong
      if (!fresh || !proofs_equal(req->proof(), auth_proof(secret_, req->nonce(), req->worker()))) {
        std::fprintf(stderr,
                     "server %d: refused %s claiming to be worker %d: it does not hold the job's "
                     "secret\n",
                     shard_.options().server, ctx->peer().c_str(), req->worker());
        return Status(StatusCode::UNAUTHENTICATED,
                      "the proof does not match this job's secret (COHORT_PS_SECRET)");
      }
      std::string session = to_hex(random_bytes(16));
      sessions_[session] = req->worker();
      reply->set_session(session);
      reply->set_mode(mode_name(shard_.options().mode));
      reply->set_version(shard_.version());
      return Status::OK;
    });
  }

  Status Init(ServerContext* ctx, grpc::ServerReader<wire::Chunk>* reader,
              wire::InitReply* reply) override {
    return guarded([&] {
      int worker = 0;
      if (Status s = authorize(ctx, &worker); !s.ok()) return s;
      shard_.touch(worker, -1);
      struct Pending {
        std::vector<int64_t> shape;
        std::vector<float> values;
        int64_t received = 0;
      };
      std::map<std::string, Pending> pending;
      wire::Chunk chunk;
      while (reader->Read(&chunk)) {
        auto it = pending.find(chunk.key());
        if (it == pending.end()) {
          Pending p;
          p.shape.assign(chunk.shape().begin(), chunk.shape().end());
          if (Status s = check_shape(chunk.key(), p.shape); !s.ok()) return s;
          p.values.resize(static_cast<size_t>(numel(p.shape)));
          it = pending.emplace(chunk.key(), std::move(p)).first;
        }
        Pending& p = it->second;
        const Compression c = compression_of(chunk.encoding());
        const int64_t n = decoded_count(chunk.data(), c);
        if (chunk.offset() < 0 || chunk.offset() + n > static_cast<int64_t>(p.values.size()))
          return Status(StatusCode::INVALID_ARGUMENT,
                        "a chunk of tensor " + chunk.key() + " lies outside it");
        decode(chunk.data(), c, p.values.data() + chunk.offset());
        p.received += n;
      }
      for (auto& [key, p] : pending) {
        if (p.received != static_cast<int64_t>(p.values.size()))
          return Status(StatusCode::INVALID_ARGUMENT,
                        "tensor " + key + " arrived with " + std::to_string(p.received) + " of " +
                            std::to_string(p.values.size()) + " elements");
        shard_.define(key, p.shape, p.values);
      }
      reply->set_restored(shard_.restored());
      reply->set_version(shard_.version());
      return Status::OK;
    });
  }

  Status Pull(ServerContext* ctx, const wire::PullRequest* req,
              grpc::ServerWriter<wire::Chunk>* writer) override {
    return guarded([&] {
      int worker = 0;
      if (Status s = authorize(ctx, &worker); !s.ok()) return s;
      shard_.touch(worker, req->step());
      const auto cancelled = [ctx] { return ctx->IsCancelled(); };
      if (req->with_push() && !req->shared_memory()) {
        const Compression c = compression_of(req->encoding());
        wire::Chunk chunk;
        chunk.set_encoding(req->encoding());
        const bool done = shard_.stream_after_push(
            worker, req->step(), remaining(ctx), cancelled,
            [&](const std::string& key, const std::vector<int64_t>& shape, int64_t offset,
                const std::vector<float>& values) {
              chunk.set_key(key);
              chunk.mutable_shape()->Assign(shape.begin(), shape.end());
              chunk.set_offset(offset);
              encode(values.data(), static_cast<int64_t>(values.size()), c, chunk.mutable_data());
              return writer->Write(chunk);
            });
        return done ? Status::OK : Status(StatusCode::CANCELLED, "the pull was cancelled");
      }
      if (!shard_.admit(worker, req->step(), remaining(ctx), cancelled))
        return Status(StatusCode::CANCELLED, "the pull was cancelled");
      if (req->shared_memory()) {
        shard_.copy_to_segment(worker);
        return Status::OK;
      }
      const Shard::Snapshot snap = shard_.snapshot();
      const Compression c = compression_of(req->encoding());
      wire::Chunk chunk;
      chunk.set_encoding(req->encoding());
      for (size_t i = 0; i < snap.keys.size(); ++i) {
        const auto& values = snap.values[i];
        const auto total = static_cast<int64_t>(values.size());
        for (int64_t off = 0; off < total || off == 0; off += kChunkElements) {
          const int64_t n = std::min(kChunkElements, total - off);
          chunk.set_key(snap.keys[i]);
          chunk.mutable_shape()->Assign(snap.shapes[i].begin(), snap.shapes[i].end());
          chunk.set_offset(off);
          encode(values.data() + off, n, c, chunk.mutable_data());
          if (!writer->Write(chunk)) return Status(StatusCode::CANCELLED, "the client went away");
          if (total == 0) break;
        }
      }
      return Status::OK;
    });
  }

  Status Push(ServerContext* ctx, grpc::ServerReader<wire::PushMessage>* reader,
              wire::PushReply* reply) override {
    return guarded([&] {
      int worker = 0;
      if (Status s = authorize(ctx, &worker); !s.ok()) return s;
      std::lock_guard<std::mutex> one_push(push_mu_[static_cast<size_t>(worker)]);
      wire::PushMessage msg;
      if (!reader->Read(&msg) || !msg.has_header())
        return Status(StatusCode::INVALID_ARGUMENT, "a push must begin with its step header");
      const wire::StepHeader& h = msg.header();
      shard_.touch(worker, h.step());
      if (h.shared_memory()) {
        if (reader->Read(&msg))
          return Status(StatusCode::INVALID_ARGUMENT,
                        "a push through shared memory has only its header");
        const DoorbellReply r =
            push_through_segment(worker, h.step(), h.lr(), h.samples(),
                                 h.then_pull() ? AfterPush::kPull : AfterPush::kReply,
                                 remaining(ctx), [ctx] { return ctx->IsCancelled(); });
        reply->set_version(r.version);
        reply->set_samples(r.samples);
        reply->set_pulled(r.pulled);
        return Status(r.code, r.message);
      }
      shard_.push_begin(worker, h.step(), h.lr(), h.samples());
      std::vector<float> values;
      while (true) {
        shard_.pace(worker, kPaceSlack, kPaceWait);
        if (!reader->Read(&msg)) break;
        if (!msg.has_chunk())
          return Status(StatusCode::INVALID_ARGUMENT, "a push has one header, then chunks");
        const wire::Chunk& chunk = msg.chunk();
        const Compression c = compression_of(chunk.encoding());
        values.resize(static_cast<size_t>(decoded_count(chunk.data(), c)));
        decode(chunk.data(), c, values.data());
        shard_.push_chunk(worker, chunk.key(), chunk.offset(), values.data(),
                          static_cast<int64_t>(values.size()));
      }
      if (ctx->IsCancelled()) return Status(StatusCode::CANCELLED, "the push was cancelled");
      const PushResult r = shard_.push_commit(worker);
      reply->set_version(r.version);
      reply->set_samples(r.samples);
      return Status::OK;
    });
  }

  Status Attach(ServerContext* ctx, const wire::AttachRequest* req,
                wire::AttachReply* reply) override {
    return guarded([&] {
      int worker = 0;
      if (Status s = authorize(ctx, &worker); !s.ok()) return s;
      shard_.touch(worker, -1);
      if (req->node() != node_) return Status::OK;  // another node: no segment, gRPC it is
      stop_doorbell(worker);  // the old segment's calls end before the segment is replaced
      Shard::SegmentLayout layout;
      try {
        layout = shard_.attach_segment(worker);
      } catch (const DistributedError& e) {
        // /dev/shm full or missing: this worker's data goes over gRPC like a remote one's.
        std::fprintf(stderr, "server %d: no shared memory for worker %d (%s); it uses gRPC\n",
                     shard_.options().server, worker, e.what());
        return Status::OK;
      }
      std::fprintf(stderr,
                   "server %d: worker %d is on this node: its data goes through shared memory\n",
                   shard_.options().server, worker);
      reply->set_segment(layout.name);
      reply->set_floats(layout.floats);
      reply->set_values(layout.values_name);
      for (size_t i = 0; i < layout.keys.size(); ++i) {
        wire::SegmentPiece* p = reply->add_pieces();
        p->set_key(layout.keys[i]);
        p->set_offset(layout.offsets[i]);
        p->set_numel(layout.numels[i]);
      }
      try {
        auto bell = std::make_unique<DoorbellServer>(
            layout.name + "-calls",
            [this, worker](const DoorbellRequest& r, const auto& cancelled) {
              return ring(worker, r, cancelled);
            });
        reply->set_doorbell(bell->name());
        std::lock_guard<std::mutex> lock(mu_);
        doorbells_[worker] = std::move(bell);
      } catch (const DistributedError& e) {
        std::fprintf(stderr, "server %d: worker %d's calls stay on gRPC (%s)\n",
                     shard_.options().server, worker, e.what());
      }
      return Status::OK;
    });
  }

  // Ends every worker's shared-memory calls: their next (or current) one fails as UNAVAILABLE.
  void stop_doorbells() {
    for (int w = 0; w < shard_.options().workers; ++w) stop_doorbell(w);
  }

  Status Heartbeat(ServerContext* ctx, const wire::HeartbeatRequest* req,
                   wire::HeartbeatReply* reply) override {
    return guarded([&] {
      int worker = 0;
      if (Status s = authorize(ctx, &worker); !s.ok()) return s;
      if (req->leaving()) {
        shard_.leave(worker);
      } else {
        shard_.touch(worker, req->step());
      }
      reply->set_version(shard_.version());
      return Status::OK;
    });
  }

 private:
  // Under the worker's push_mu_. The shared-memory path's step: the push whose gradients wait in
  // the worker's segment, then (then_pull) the next step's values into it once the mode admits that
  // step.
  // What a push through shared memory does once applied: reply at once; wait until the worker is
  // admitted to its next step (it then takes the shared values itself); or wait so, and copy the
  // values into its segment.
  enum class AfterPush { kReply, kAdmit, kPull };

  DoorbellReply push_through_segment(int worker, int64_t step, double lr, int64_t samples,
                                     AfterPush after, collectives::Millis timeout,
                                     const std::function<bool()>& cancelled) {
    const PushResult r = shard_.push_from_segment(worker, step, lr, samples);
    DoorbellReply reply;
    reply.version = r.version;
    reply.samples = r.samples;
    if (after == AfterPush::kReply) return reply;
    if (!shard_.admit(worker, step + 1, timeout, cancelled))
      return {StatusCode::CANCELLED, "the push was cancelled"};
    if (after == AfterPush::kAdmit) return reply;
    reply.version = shard_.copy_to_segment(worker);
    reply.pulled = true;
    return reply;
  }

  // A call through worker's doorbell: what Push (shared memory, then pull) or Pull (shared
  // memory) would do over gRPC.
  DoorbellReply ring(int worker, const DoorbellRequest& req,
                     const std::function<bool()>& cancelled) {
    const auto timeout = std::clamp(collectives::Millis(req.timeout_ms), collectives::Millis(0),
                                    collectives::Millis(3600 * 1000));
    shard_.touch(worker, req.step);
    if (req.call != DoorbellCall::kPull) {
      std::lock_guard<std::mutex> one_push(push_mu_[static_cast<size_t>(worker)]);
      return push_through_segment(
          worker, req.step, req.lr, req.samples,
          req.call == DoorbellCall::kPushThenPull ? AfterPush::kPull : AfterPush::kAdmit, timeout,
          cancelled);
    }
    if (!shard_.admit(worker, req.step, timeout, cancelled))
      return {StatusCode::CANCELLED, "the pull was cancelled"};
    DoorbellReply reply;
    reply.version = shard_.copy_to_segment(worker);
    reply.pulled = true;
    return reply;
  }

  void stop_doorbell(int worker) {
    std::unique_ptr<DoorbellServer> old;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = doorbells_.find(worker);
      if (it == doorbells_.end()) return;
      old = std::move(it->second);
      doorbells_.erase(it);
    }
    // Destroyed outside mu_: its thread may be in a call that needs it.
  }

  struct Nonce {
    int worker;
    Clock::time_point expires;
  };

  // The client's deadline bounds a wait; without one, an hour.
  static collectives::Millis remaining(const ServerContext* ctx) {
    auto t = std::chrono::duration_cast<collectives::Millis>(ctx->deadline() -
                                                             std::chrono::system_clock::now());
    return std::clamp(t, collectives::Millis(0), collectives::Millis(3600 * 1000));
  }

  bool valid_worker(int w) const { return w >= 0 && w < shard_.options().workers; }
  std::string not_in_job(int w) const {
    return "worker " + std::to_string(w) + " is not one of this job's " +
           std::to_string(shard_.options().workers) + " workers";
  }
  static int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  static Status check_shape(const std::string& key, const std::vector<int64_t>& shape) {
    if (key.empty()) return Status(StatusCode::INVALID_ARGUMENT, "a tensor has an empty key");
    if (shape.size() > kMaxDims)
      return Status(StatusCode::INVALID_ARGUMENT, "tensor " + key + " has more than 8 dimensions");
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0 || (d > 0 && n > kMaxPieceElements / d))
        return Status(StatusCode::INVALID_ARGUMENT, "tensor " + key + " has an invalid shape");
      n *= d;
    }
    return Status::OK;
  }

  Status authorize(ServerContext* ctx, int* worker) {
    const auto& md = ctx->client_metadata();
    auto it = md.find("cohort-session");
    if (it == md.end())
      return Status(StatusCode::UNAUTHENTICATED, "no session: authenticate first");
    std::lock_guard<std::mutex> lock(mu_);
    auto s = sessions_.find(std::string(it->second.data(), it->second.size()));
    if (s == sessions_.end())
      return Status(StatusCode::UNAUTHENTICATED, "unknown session: authenticate again");
    *worker = s->second;
    return Status::OK;
  }

  Shard& shard_;
  std::string secret_;
  std::string node_;  // node_identity(): workers that send the same may use shared memory
  std::mutex mu_;
  std::map<std::string, Nonce> nonces_;
  std::map<std::string, int> sessions_;
  std::vector<std::mutex> push_mu_;                           // one push at a time per worker
  std::map<int, std::unique_ptr<DoorbellServer>> doorbells_;  // per worker on this node; mu_
};

class GrpcServer final : public ServerTransport {
 public:
  explicit GrpcServer(ServerOptions o) : o_(std::move(o)) {
    if (o_.secret.empty())
      COHORT_THROW(ConfigError,
                   "a parameter server needs the job's secret in COHORT_PS_SECRET (cohort launch "
                   "sets it; for a server started by hand, generate one and give it to every "
                   "process of the job)");
    shard_ = std::make_unique<Shard>(o_.shard);
    service_ = std::make_unique<Service>(*shard_, o_.secret);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(o_.bind + ":" + std::to_string(o_.port),
                             grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(o_.max_message_bytes);
    builder.SetMaxSendMessageSize(o_.max_message_bytes);
    // Large frames and windows: a step moves megabytes, and HTTP/2's 16 KB frames and 64 KB
    // initial window would cut it into thousands of round trips.
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kFrameBytes);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kWindowBytes);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, kWindowBytes);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    if (!server_ || port_ == 0)
      COHORT_THROW(DistributedError, "parameter server ", o_.shard.server, " cannot listen on ",
                   o_.bind, ":", o_.port,
                   " (is the address one of this host's, and the port free?)");
    reaper_ = std::thread([this] { reap(); });
  }
  ~GrpcServer() override { shutdown(); }

  int port() const override { return port_; }
  std::string address() const override { return o_.bind + ":" + std::to_string(port_); }
  Shard& shard() override { return *shard_; }

  void shutdown() override {
    if (stopped_.exchange(true)) return;
    {
      std::lock_guard<std::mutex> lock(reaper_mu_);
      reaper_cv_.notify_all();
    }
    if (reaper_.joinable()) reaper_.join();
    service_->stop_doorbells();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
    try {
      shard_->checkpoint();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "server %d: the last checkpoint failed: %s\n", o_.shard.server,
                   e.what());
    }
  }

  // Drops workers that stopped calling, and says so: the log names each one.
  void reap() {
    std::unique_lock<std::mutex> lock(reaper_mu_);
    while (!stopped_.load()) {
      reaper_cv_.wait_for(lock, std::chrono::milliseconds(200));
      for (int w : shard_->expire_workers()) {
        std::string live;
        for (int v : shard_->live_workers()) live += (live.empty() ? "" : ", ") + std::to_string(v);
        std::fprintf(stderr,
                     "server %d: worker %d dropped: no call or heartbeat for %.0f s; training goes "
                     "on with worker(s) %s\n",
                     o_.shard.server, w, o_.shard.worker_timeout.count() / 1000.0,
                     live.empty() ? "none" : live.c_str());
      }
    }
  }

  ServerOptions o_;
  std::unique_ptr<Shard> shard_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> stopped_{false};
  std::thread reaper_;
  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
};

std::unique_ptr<ServerTransport> make_server(ServerOptions o) {
  return std::make_unique<GrpcServer>(std::move(o));
}
std::unique_ptr<WorkerTransport> make_worker(std::vector<core::Tensor> params,
                                             const std::vector<std::string>& names,
                                             ClientOptions o) {
  return std::make_unique<GrpcWorker>(std::move(params), names, std::move(o));
}
std::string version() { return grpc::Version(); }

}  // namespace

}  // namespace cohort::ps

extern "C" const cohort::ps::TransportModule cohort_grpc_module{
    COHORT_VERSION, &cohort::ps::make_server, &cohort::ps::make_worker, &cohort::ps::version};
