#include "parameter_server/client.h"

#include "parameter_server/client_impl.h"

#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "collectives/shared_memory.h"
#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "parameter_server/connection.h"
#include "parameter_server/doorbell.h"
#include "parameter_server/ps.grpc.pb.h"
#include "parameter_server/shard.h"
#include "parameter_server/task_thread.h"

namespace cohort::ps {

using namespace client_detail;

GrpcWorker::GrpcWorker(std::vector<core::Tensor> params, const std::vector<std::string>& names,
                       ClientOptions o)
    : params_(std::move(params)), o_(std::move(o)), node_(collectives::node_identity()) {
  COHORT_CHECK(o_.resolve, "parameter-server client: no way to find the servers");
  std::vector<TensorSpec> specs;
  for (size_t i = 0; i < params_.size(); ++i) {
    COHORT_CHECK(params_[i].dtype() == core::DType::kFloat32 && params_[i].is_contiguous(),
                 "parameter-server training needs contiguous float32 parameters; ", names[i],
                 " is not");
    specs.push_back({names[i], params_[i].sizes()});
  }
  pieces_ = partition(specs, {o_.servers, o_.min_slice_bytes, 4});
  aliased_.assign(pieces_.size(), 0);
  of_param_.resize(params_.size());
  for (size_t p = 0; p < pieces_.size(); ++p) of_param_[pieces_[p].tensor].push_back(p);
  for (int s = 0; s < o_.servers; ++s) conns_.push_back(std::make_unique<Connection>(s, o_));
  // Every server at once: connect, authenticate, define our pieces.
  run_everywhere([this](Connection& c) { with_retries(c, "initialise", [] {}); });
  for (size_t i = 0; i < params_.size(); ++i)
    hooks_.push_back(params_[i].register_post_accumulate_grad_hook(
        [this, i](core::Tensor&) { on_gradient(i); }));
  heartbeat_ = std::thread([this] { heartbeats(); });
}

GrpcWorker::~GrpcWorker() {
  {
    std::lock_guard<std::mutex> lock(hb_mu_);
    hb_stop_ = true;
  }
  hb_cv_.notify_all();
  heartbeat_.join();
  for (auto& c : conns_) {
    c->cancel_prefetch();  // a pull beside a push that never came would wait out its deadline
    unalias(*c);           // their threads are idle: nothing is queued now
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].remove_hook(hooks_[i]);
    core::autograd::set_grad_destination(params_[i], core::Tensor());
  }
  conns_.clear();  // joins their threads after the queued calls
}

void GrpcWorker::pull(int64_t step) {
  std::vector<std::future<void>> fs;
  for (auto& conn : conns_) {
    Connection* c = conn.get();
    if (take_prefetch(*c, step)) continue;
    // Left by this step's push in the segment, or admitted by it: the values are there to
    // take, on this thread.
    if (c->local() && c->prefetched == step) {
      c->prefetched = -1;
      copy_from_segment(*c);
      continue;
    }
    if (c->local() && c->admitted == step) {
      c->admitted = -1;
      if (copy_from_values(*c)) {
        alias(*c);
        continue;
      }
    }
    fs.push_back(c->post([this, c, step] { pull_from(*c, step); }));
  }
  wait_all(fs);
}

void GrpcWorker::pull_from(Connection& c, int64_t step) {
  with_retries(c, "pull step " + std::to_string(step), [&] {
    if (c.shared() && c.prefetched == step) {
      c.prefetched = -1;
      copy_from_segment(c);
      return;
    }
    // (A server that admitted us was rung by pull() itself; it gets here when an update ran
    // while pull() copied its values, async: the doorbell's pull copies one whole.)
    if (c.shared() && c.doorbell) {
      DoorbellRequest req;
      req.call = DoorbellCall::kPull;
      req.step = step;
      check(ring(c, req), "server " + c.name() + ": pull of step " + std::to_string(step));
      // A pull that pull() could not take from the shared values: they moved while it copied,
      // or were retired. The parameters get the server's copy in memory of their own.
      unalias(c);
      copy_from_segment(c);
      alias(c);
      return;
    }
    auto ctx = c.context(o_.timeout);
    wire::PullRequest req;
    req.set_step(step);
    req.set_encoding(encoding_of(o_.compression));
    req.set_shared_memory(c.shared());
    auto reader = c.stub().Pull(ctx.get(), req);
    if (c.shared()) {
      wire::Chunk ignored;
      while (reader->Read(&ignored)) {
      }
      check(reader->Finish(), "server " + c.name() + ": pull of step " + std::to_string(step));
      copy_from_segment(c);
      return;
    }
    read_values(c, *reader, step, [this](const Piece& piece) {
      return params_[piece.tensor].data_ptr<float>() + piece.offset;
    });
  });
}

void GrpcWorker::read_values(Connection& c, grpc::ClientReader<wire::Chunk>& reader, int64_t step,
                             const std::function<float*(const Piece&)>& where) {
  wire::Chunk chunk;
  size_t got = 0;
  while (reader.Read(&chunk)) {
    const Piece* piece = find_piece(chunk.key(), c.index());
    if (!piece) continue;  // another worker's model defined more; not ours
    const Compression comp =
        chunk.encoding() == wire::BFLOAT16 ? Compression::kBFloat16 : Compression::kNone;
    const int64_t n = decoded_count(chunk.data(), comp);
    COHORT_CHECK(chunk.offset() >= 0 && chunk.offset() + n <= piece->numel, "server ", c.index(),
                 " sent a chunk outside tensor ", chunk.key());
    decode(chunk.data(), comp, where(*piece) + chunk.offset());
    if (chunk.offset() == 0) ++got;
  }
  check(reader.Finish(), "server " + c.name() + ": pull of step " + std::to_string(step));
  size_t expected = 0;
  for (const auto& p : pieces_) expected += p.server == c.index();
  if (got < expected)
    COHORT_THROW(DistributedError, "server ", c.index(), " sent ", got, " of the ", expected,
                 " tensors it should hold");
}

void GrpcWorker::start_prefetch(int64_t step) {
  prefetch_.resize(pieces_.size());
  for (auto& conn : conns_) {
    Connection* c = conn.get();
    // Shared memory: the push's reply brings the values.
    if (c->shared() || !c->connected() || c->prefetch_step >= 0) continue;
    auto stub = c->shared_stub();
    auto ctx = c->context(o_.timeout);
    grpc::ClientContext* context = ctx.get();  // the connection holds it until pull() takes it
    c->set_prefetch_context(std::move(ctx));
    c->prefetch_step = step;
    c->prefetch_done = c->post_prefetch([this, c, stub, context, step] {
      wire::PullRequest req;
      req.set_step(step);
      req.set_encoding(encoding_of(o_.compression));
      req.set_with_push(true);
      auto reader = stub->Pull(context, req);
      read_values(*c, *reader, step, [this](const Piece& piece) {
        auto& v = prefetch_[static_cast<size_t>(&piece - pieces_.data())];
        v.resize(static_cast<size_t>(piece.numel));
        return v.data();
      });
    });
  }
}

bool GrpcWorker::take_prefetch(Connection& c, int64_t step) {
  if (c.prefetch_step < 0) return false;
  const bool wanted = c.prefetch_step == step;
  c.prefetch_step = -1;
  if (!wanted) c.cancel_prefetch();
  bool ok = true;
  try {
    c.prefetch_done.get();
  } catch (const std::exception&) {
    ok = false;
  }
  c.set_prefetch_context(nullptr);
  if (!wanted || !ok) return false;
  for (size_t p = 0; p < pieces_.size(); ++p)
    if (pieces_[p].server == c.index())
      std::memcpy(params_[pieces_[p].tensor].data_ptr<float>() + pieces_[p].offset,
                  prefetch_[p].data(), prefetch_[p].size() * sizeof(float));
  return true;
}

void GrpcWorker::cancel_prefetches() {
  for (auto& c : conns_)
    if (c->prefetch_step >= 0) take_prefetch(*c, -1);
}

void GrpcWorker::begin_step(int64_t step, double lr, int64_t samples, bool during_backward) {
  step_ = step;
  lr_ = lr;
  samples_ = samples;
  sent_.assign(params_.size(), 0);
  for (auto& c : conns_) {
    Connection* conn = c.get();
    if (conn->local()) {
      open_push(*conn);
    } else {
      conn->queued.push_back(conn->post([this, conn] { open_push(*conn); }));
    }
  }
  if (o_.pull_with_push) start_prefetch(step + 1);
  streaming_ = during_backward;
}

void GrpcWorker::push_all() {
  for (size_t i = 0; i < params_.size(); ++i)
    if (!sent_[i]) send_param(i);
}

StepResult GrpcWorker::finish_step() {
  streaming_ = false;
  push_all();
  std::vector<std::future<void>> done;  // tasks that write into `samples`: always waited for
  std::vector<int64_t> samples(conns_.size(), 0);
  std::vector<Connection*> rung;
  std::exception_ptr first;
  for (auto& c : conns_) {
    Connection* conn = c.get();
    const auto i = static_cast<size_t>(conn->index());
    if (conn->local()) {  // every server rung before any reply is awaited
      try {
        wait_all(conn->queued);
      } catch (...) {
        if (!first) first = std::current_exception();
        continue;
      }
      ring_push(*conn);
      rung.push_back(conn);
      continue;
    }
    done.push_back(conn->post([this, conn, i, &samples] { samples[i] = close_push(*conn); }));
  }
  for (Connection* conn : rung) {
    const auto i = static_cast<size_t>(conn->index());
    const grpc::Status s = pushed(*conn);
    if (s.ok()) {
      samples[i] = conn->push_reply.samples();
    } else {  // reconnecting is the connection's thread's work
      done.push_back(
          conn->post([this, conn, i, s, &samples] { samples[i] = settle_push(*conn, s); }));
    }
  }
  for (auto& c : conns_) {
    try {
      wait_all(c->queued);
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  try {
    wait_all(done);
  } catch (...) {
    if (!first) first = std::current_exception();
  }
  if (first) {
    cancel_prefetches();
    std::rethrow_exception(first);
  }
  return {samples[0]};
}

void GrpcWorker::leave() {
  run_everywhere([this](Connection& c) {
    unalias(c);  // the others may go on updating the values once we have left
    try {
      auto ctx = c.context(std::chrono::seconds(5));
      wire::HeartbeatRequest req;
      req.set_leaving(true);
      wire::HeartbeatReply reply;
      (void)c.stub().Heartbeat(ctx.get(), req, &reply);
    } catch (const std::exception&) {
      // A server that is gone does not need to hear it.
    }
  });
}

int64_t GrpcWorker::bytes_per_step() const {
  int64_t n = 0;
  for (const auto& p : pieces_) n += p.numel;
  return n * static_cast<int64_t>(element_bytes(o_.compression));
}

const Piece* GrpcWorker::find_piece(const std::string& key, int server) const {
  for (const auto& p : pieces_)
    if (p.server == server && p.key == key) return &p;
  return nullptr;
}

void GrpcWorker::run_everywhere(const std::function<void(Connection&)>& fn) {
  std::vector<std::future<void>> fs;
  for (auto& c : conns_) {
    Connection* conn = c.get();
    fs.push_back(conn->post([conn, &fn] { fn(*conn); }));
  }
  wait_all(fs);
}

void GrpcWorker::wait_all(std::vector<std::future<void>>& fs) {
  std::exception_ptr first;
  for (auto& f : fs) {
    try {
      f.get();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  fs.clear();
  if (first) std::rethrow_exception(first);
}

void GrpcWorker::with_retries(Connection& c, const std::string& what,
                              const std::function<void()>& call, bool reconnect_first) {
  const auto deadline = Clock::now() + o_.timeout;
  std::string last;
  bool need_connect = reconnect_first || !c.connected();
  while (true) {
    try {
      if (need_connect) {
        c.connect();
        init(c);
        attach(c);
        need_connect = false;
      }
      call();
      return;
    } catch (const RpcError& e) {
      if (e.code == grpc::StatusCode::DEADLINE_EXCEEDED)
        COHORT_THROW(TimeoutError, "worker ", o_.worker, ": ", what, " on parameter server ",
                     c.index(), " timed out: ", e.what());
      if (!e.retryable())
        COHORT_THROW(DistributedError, "worker ", o_.worker, ": ", what, " on parameter server ",
                     c.index(), " failed: ", e.what());
      last = e.what();
      need_connect = true;
    }
    if (Clock::now() >= deadline)
      COHORT_THROW(DistributedError, "worker ", o_.worker, ": parameter server ", c.index(),
                   " could not be reached for ", o_.timeout.count() / 1000.0, " s (", what,
                   "); last error: ", last);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

void GrpcWorker::init(Connection& c) {
  auto ctx = c.context(o_.timeout);
  wire::InitReply reply;
  auto writer = c.stub().Init(ctx.get(), &reply);
  wire::Chunk chunk;
  for (const auto& p : pieces_) {
    if (p.server != c.index()) continue;
    const float* v = params_[p.tensor].data_ptr<float>() + p.offset;
    for (int64_t off = 0; off < p.numel || off == 0; off += kChunkElements) {
      const int64_t n = std::min(kChunkElements, p.numel - off);
      chunk.set_key(p.key);
      chunk.mutable_shape()->Assign(p.shape.begin(), p.shape.end());
      chunk.set_offset(off);
      chunk.set_encoding(wire::FLOAT32);  // initial values exactly, whatever the compression
      encode(v + off, n, Compression::kNone, chunk.mutable_data());
      if (!writer->Write(chunk)) break;
      if (p.numel == 0) break;
    }
  }
  writer->WritesDone();
  check(writer->Finish(), "server " + c.name() + ": defining the model's tensors");
}

void GrpcWorker::heartbeats() {
  std::unique_lock<std::mutex> lock(hb_mu_);
  const auto period = std::chrono::milliseconds(static_cast<int64_t>(o_.heartbeat_s * 1000));
  while (!hb_cv_.wait_for(lock, period, [this] { return hb_stop_; })) {
    for (auto& c : conns_) {
      auto stub = c->shared_stub();
      if (!stub) continue;
      try {
        auto ctx = c->context(std::chrono::seconds(5));
        wire::HeartbeatRequest req;
        req.set_step(step_);
        wire::HeartbeatReply reply;
        (void)stub->Heartbeat(ctx.get(), req, &reply);
      } catch (const std::exception&) {
        // The next call on that connection finds out and reconnects.
      }
    }
  }
}

}  // namespace cohort::ps
