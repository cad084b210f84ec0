#include "parameter_server/client.h"

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
namespace {

using Clock = std::chrono::steady_clock;
using detail::check;
using detail::Connection;
using detail::RpcError;

wire::Encoding encoding_of(Compression c) {
  return c == Compression::kBFloat16 ? wire::BFLOAT16 : wire::FLOAT32;
}

}  // namespace

class PsWorker::Impl {
 public:
  Impl(std::vector<core::Tensor> params, const std::vector<std::string>& names, ClientOptions o)
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

  ~Impl() {
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

  void pull(int64_t step) {
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

  // pull()'s general case, on c's thread: servers over gRPC, and any call to be retried.
  void pull_from(Connection& c, int64_t step) {
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

  // Reads a pull's chunks from connection c's server into where(piece), checking that every piece
  // of ours it holds arrived.
  void read_values(Connection& c, grpc::ClientReader<wire::Chunk>& reader, int64_t step,
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

  // The next step's pull over gRPC, sent by begin_step beside the push (pull_with_push) on each
  // connection's second thread: the server sends each block of the values once the push has
  // been applied to it (Shard::stream_after_push). They land in a staging copy: the parameters
  // are read by this step's backward, and may be read by evaluation and checkpoints, until
  // pull() moves them in. One attempt, without reconnecting (the connection's own thread does
  // that): when it fails, pull() fetches the values the usual way.
  void start_prefetch(int64_t step) {
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

  // True when c's prefetched values of `step` arrived and are now the parameters'.
  bool take_prefetch(Connection& c, int64_t step) {
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

  // Ends every prefetch still running (the step failed: its push may never come).
  void cancel_prefetches() {
    for (auto& c : conns_)
      if (c->prefetch_step >= 0) take_prefetch(*c, -1);
  }

  void begin_step(int64_t step, double lr, int64_t samples, bool during_backward) {
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

  void push_all() {
    for (size_t i = 0; i < params_.size(); ++i)
      if (!sent_[i]) send_param(i);
  }

  StepResult finish_step() {
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

  void leave() {
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

  const std::vector<Piece>& pieces() const { return pieces_; }
  int64_t bytes_per_step() const {
    int64_t n = 0;
    for (const auto& p : pieces_) n += p.numel;
    return n * static_cast<int64_t>(element_bytes(o_.compression));
  }

 private:
  const Piece* find_piece(const std::string& key, int server) const {
    for (const auto& p : pieces_)
      if (p.server == server && p.key == key) return &p;
    return nullptr;
  }

  void run_everywhere(const std::function<void(Connection&)>& fn) {
    std::vector<std::future<void>> fs;
    for (auto& c : conns_) {
      Connection* conn = c.get();
      fs.push_back(conn->post([conn, &fn] { fn(*conn); }));
    }
    wait_all(fs);
  }

  // Waits for every future, then rethrows the first failure.
  static void wait_all(std::vector<std::future<void>>& fs) {
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

  // Runs `call` on connection `c`, reconnecting (and redefining our pieces there) while the
  // server is away, until the timeout. Runs on c's thread.
  void with_retries(Connection& c, const std::string& what, const std::function<void()>& call,
                    bool reconnect_first = false) {
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

  // Defines this worker's pieces on c's server with the current parameter values.
  void init(Connection& c) {
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

  // Copies c's server's shared values into the parameters; false when an update ran meanwhile (or
  // the values were replaced), and the parameters may then hold a mixture.
  bool copy_from_values(Connection& c) {
    auto* lock = static_cast<Shard::SharedValues*>(c.values->addr());
    const uint64_t seq = lock->seq.load(std::memory_order_acquire);
    if (seq & 1) return false;
    const float* base = static_cast<const float*>(c.values->addr()) + Shard::kSharedValuesOffset;
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (pieces_[p].server == c.index() && !aliased_[p])
        std::memcpy(params_[pieces_[p].tensor].data_ptr<float>() + pieces_[p].offset,
                    base + c.segment_offset[p],
                    static_cast<size_t>(pieces_[p].numel) * sizeof(float));
    std::atomic_thread_fence(std::memory_order_acquire);
    return lock->seq.load(std::memory_order_relaxed) == seq;
  }

  // (Never into a parameter that views the shared values: this worker never writes those.)
  void copy_from_segment(Connection& c) {
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (pieces_[p].server == c.index() && !aliased_[p])
        std::memcpy(params_[pieces_[p].tensor].data_ptr<float>() + pieces_[p].offset,
                    c.segment_values(p), static_cast<size_t>(pieces_[p].numel) * sizeof(float));
  }

  // alias_values: once c's server has admitted this worker, the parameters it holds whole become
  // views of its shared values. Not before the first pull, so that what the worker writes into
  // its parameters until then (a checkpoint it resumes from) stays its own.
  void alias(Connection& c) {
    if (!o_.alias_values || c.mode() != Mode::kSync || !c.values || c.aliased) return;
    // Odd: an update is writing (a dropped worker's late pull), or a new layout retired these
    // values for good (Shard::SharedValues); either way they are not the ones to compute with.
    if (static_cast<Shard::SharedValues*>(c.values->addr())->seq.load(std::memory_order_acquire) &
        1)
      return;
    core::autograd::NoGradGuard no_grad;
    float* base = static_cast<float*>(c.values->addr()) + Shard::kSharedValuesOffset;
    for (size_t p = 0; p < pieces_.size(); ++p) {
      const Piece& piece = pieces_[p];
      core::Tensor& param = params_[piece.tensor];
      if (piece.server != c.index() || piece.offset != 0 || piece.numel != param.numel()) continue;
      param.set_(core::from_blob(base + c.segment_offset[p], param.sizes(), core::DType::kFloat32,
                                 c.values));
      aliased_[p] = 1;
    }
    c.aliased = true;
  }

  // Gives the parameters that view c's server's values memory of their own, holding what they
  // show now: a copy under the values' sequence lock, taken once no update is writing and again
  // if one landed meanwhile. Values that stay odd for 10 ms were retired by a new layout (or
  // their server died mid-update): the copy then stands as it is. The mapping stays valid while
  // the views hold it, even after the server has gone.
  void unalias(Connection& c) {
    if (!c.aliased) return;
    core::autograd::NoGradGuard no_grad;
    auto* lock = static_cast<Shard::SharedValues*>(c.values->addr());
    std::vector<std::pair<size_t, core::Tensor>> own;
    for (int attempt = 0; attempt < 100; ++attempt) {
      const uint64_t seq = lock->seq.load(std::memory_order_acquire);
      if (seq & 1) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      own.clear();
      for (size_t p = 0; p < pieces_.size(); ++p)
        if (aliased_[p] && pieces_[p].server == c.index())
          own.emplace_back(p, params_[pieces_[p].tensor].clone());
      std::atomic_thread_fence(std::memory_order_acquire);
      if (lock->seq.load(std::memory_order_relaxed) == seq) break;
      own.clear();
    }
    if (own.empty()) {
      for (size_t p = 0; p < pieces_.size(); ++p)
        if (aliased_[p] && pieces_[p].server == c.index())
          own.emplace_back(p, params_[pieces_[p].tensor].clone());
    }
    for (auto& [p, t] : own) {
      params_[pieces_[p].tensor].set_(t);
      aliased_[p] = 0;
    }
    c.aliased = false;
  }

  // Asks a server for the shared-memory data path; a server on another node (or a segment this
  // process cannot open) leaves the connection on gRPC.
  void attach(Connection& c) {
    unalias(c);  // the values of the server we had (gone, or restarted) stay as they were
    for (size_t p = 0; p < pieces_.size(); ++p)  // the old segment is no longer read
      if (pieces_[p].server == c.index())
        core::autograd::set_grad_destination(params_[pieces_[p].tensor], core::Tensor());
    c.segment.reset();
    c.doorbell.reset();
    c.values.reset();
    c.admitted = -1;
    c.prefetched = -1;  // whatever the old segment held is gone with it
    if (!o_.shared_memory) return;
    auto ctx = c.context(o_.timeout);
    wire::AttachRequest req;
    req.set_node(node_);
    wire::AttachReply reply;
    check(c.stub().Attach(ctx.get(), req, &reply),
          "server " + c.name() + ": attaching shared memory");
    if (reply.segment().empty()) return;
    std::vector<int64_t> offsets(pieces_.size(), -1);
    for (const auto& sp : reply.pieces()) {
      const Piece* piece = find_piece(sp.key(), c.index());
      if (!piece) continue;
      COHORT_CHECK(sp.numel() == piece->numel && sp.offset() >= 0 &&
                       sp.offset() + sp.numel() <= reply.floats(),
                   "server ", c.index(), " placed tensor ", sp.key(),
                   " outside its shared-memory segment");
      offsets[static_cast<size_t>(piece - pieces_.data())] = sp.offset();
    }
    for (size_t p = 0; p < pieces_.size(); ++p)
      if (pieces_[p].server == c.index() && offsets[p] < 0)
        COHORT_THROW(DistributedError, "server ", c.index(),
                     "'s shared-memory segment lacks tensor ", pieces_[p].key);
    try {
      c.segment = std::make_shared<collectives::Mapping>(collectives::map_segment(
          reply.segment(), 2 * static_cast<size_t>(reply.floats()) * sizeof(float), false));
    } catch (const DistributedError& e) {
      std::fprintf(stderr,
                   "worker %d: shared memory with parameter server %d failed (%s); using gRPC\n",
                   o_.worker, c.index(), e.what());
      collectives::unlink_segment(reply.segment());  // nobody will open it now
      return;
    }
    collectives::unlink_segment(reply.segment());  // both sides have it: no name left behind
    c.segment_floats = reply.floats();
    c.segment_offset = std::move(offsets);
    if (!reply.doorbell().empty()) {
      try {
        c.doorbell = std::make_unique<DoorbellClient>(reply.doorbell());
      } catch (const DistributedError& e) {
        std::fprintf(stderr, "worker %d: calls to parameter server %d stay on gRPC (%s)\n",
                     o_.worker, c.index(), e.what());
      }
    }
    if (c.doorbell && !reply.values().empty()) {
      try {
        c.values = std::make_shared<collectives::Mapping>(collectives::map_segment(
            reply.values(),
            static_cast<size_t>(Shard::kSharedValuesOffset + reply.floats()) * sizeof(float),
            false));
      } catch (const DistributedError& e) {
        std::fprintf(stderr, "worker %d: parameter server %d copies the values for it (%s)\n",
                     o_.worker, c.index(), e.what());
      }
    }
    // A parameter this server holds whole gets its gradient written by backward straight into
    // the segment (linear layers do; write_piece then has nothing to copy). The view keeps the
    // mapping alive.
    for (size_t p = 0; p < pieces_.size(); ++p) {
      const Piece& piece = pieces_[p];
      const core::Tensor& param = params_[piece.tensor];
      if (piece.server != c.index() || piece.offset != 0 || piece.numel != param.numel()) continue;
      core::autograd::set_grad_destination(
          param,
          core::from_blob(c.segment_grad(p), param.sizes(), core::DType::kFloat32, c.segment));
    }
  }

  void on_gradient(size_t i) {
    if (streaming_ && !sent_[i]) send_param(i);
  }

  // Queues the gradient of parameter i (zeros when it has none) to the servers holding it.
  void send_param(size_t i) {
    sent_[i] = 1;
    core::Tensor g = params_[i].grad();
    if (g.defined()) g = g.contiguous();  // held by the tasks until they have sent it
    for (size_t p : of_param_[i]) {
      Connection* conn = conns_[static_cast<size_t>(pieces_[p].server)].get();
      // Backward wrote it into the segment already (a gradient destination): no task to wake.
      if (conn->local() && g.defined() &&
          g.data_ptr<float>() + pieces_[p].offset == conn->segment_grad(p))
        continue;
      conn->queued.push_back(conn->post([this, conn, g, p] { write_piece(*conn, p, g); }));
    }
  }

  void write_piece(Connection& c, size_t p, const core::Tensor& grad) {
    if (c.push_broken) return;  // the whole push is redone at the end
    const Piece& piece = pieces_[p];
    if (c.shared()) {
      const size_t bytes = static_cast<size_t>(piece.numel) * sizeof(float);
      if (grad.defined()) {
        const float* from = grad.data_ptr<float>() + piece.offset;
        if (from != c.segment_grad(p)) std::memcpy(c.segment_grad(p), from, bytes);
      } else {
        std::memset(c.segment_grad(p), 0, bytes);
      }
      return;
    }
    wire::PushMessage msg;
    wire::Chunk* chunk = msg.mutable_chunk();
    chunk->set_key(piece.key);
    chunk->set_encoding(encoding_of(o_.compression));
    std::vector<float> zeros;
    const float* v = nullptr;
    if (grad.defined()) {
      v = grad.data_ptr<float>() + piece.offset;  // contiguous: send_param made it so
    } else {
      zeros.assign(static_cast<size_t>(piece.numel), 0.f);
      v = zeros.data();
    }
    for (int64_t off = 0; off < piece.numel || off == 0; off += kChunkElements) {
      const int64_t n = std::min(kChunkElements, piece.numel - off);
      chunk->set_offset(off);
      encode(v + off, n, o_.compression, chunk->mutable_data());
      if (!c.push_writer->Write(msg)) {
        c.push_broken = true;
        return;
      }
      if (piece.numel == 0) break;
    }
  }

  // Opens the push's stream; through shared memory, the call waits for finish_push.
  void open_push(Connection& c) {
    c.push_broken = false;
    if (c.shared()) return;
    start_push(c, false);
  }

  void start_push(Connection& c, bool shared) {
    c.push_ctx = c.context(o_.timeout);
    c.push_writer = c.stub().Push(c.push_ctx.get(), &c.push_reply);
    wire::PushMessage msg;
    msg.mutable_header()->set_step(step_);
    msg.mutable_header()->set_lr(lr_);
    msg.mutable_header()->set_samples(samples_);
    msg.mutable_header()->set_shared_memory(shared);
    msg.mutable_header()->set_then_pull(shared);
    c.prefetched = -1;
    if (!c.push_writer->Write(msg)) c.push_broken = true;
  }

  // The step's push through c's doorbell, in two halves so that a worker rings all its servers
  // before it waits for any: ring_push, then pushed for the status.
  void ring_push(Connection& c) {
    c.prefetched = -1;
    c.admitted = -1;
    DoorbellRequest req;
    req.call = c.values ? DoorbellCall::kPushThenAdmit : DoorbellCall::kPushThenPull;
    req.step = step_;
    req.lr = lr_;
    req.samples = samples_;
    req.timeout_ms = o_.timeout.count();
    c.doorbell->ring(req);
  }
  grpc::Status pushed(Connection& c) {
    const grpc::Status s = answer(c);
    if (s.ok() && c.push_reply.pulled()) c.prefetched = step_ + 1;
    if (s.ok() && c.values) c.admitted = step_ + 1;
    return s;
  }

  grpc::Status finish_push(Connection& c) {
    if (c.local()) {
      ring_push(c);
      return pushed(c);
    }
    if (c.shared()) start_push(c, true);
    if (!c.push_broken) c.push_writer->WritesDone();
    grpc::Status s = c.push_writer->Finish();
    c.push_writer.reset();
    c.push_ctx.reset();
    if (s.ok() && c.push_reply.pulled()) c.prefetched = step_ + 1;
    return s;
  }

  // A call through c's doorbell, answered as gRPC would (PushReply's fields in c.push_reply).
  grpc::Status ring(Connection& c, DoorbellRequest req) {
    req.timeout_ms = o_.timeout.count();
    c.doorbell->ring(req);
    return answer(c);
  }
  // The reply to c's doorbell's last ring. The server may wait up to the timeout for the mode's
  // rule; its reply gets a little longer to arrive, so that a server-side timeout reaches us with
  // its message naming the late workers.
  grpc::Status answer(Connection& c) {
    const DoorbellReply r = c.doorbell->wait(o_.timeout + std::chrono::seconds(5));
    c.push_reply.set_version(r.version);
    c.push_reply.set_samples(r.samples);
    c.push_reply.set_pulled(r.pulled);
    return grpc::Status(r.code, r.message);
  }

  // Ends the streamed push; if it broke (the server went away), pushes the step again whole.
  int64_t close_push(Connection& c) { return settle_push(c, finish_push(c)); }
  // The rest of close_push, given how the push ended: the samples, or the push again whole (on
  // c's thread).
  int64_t settle_push(Connection& c, const grpc::Status& s) {
    if (s.ok()) return c.push_reply.samples();
    RpcError first(s, "server " + c.name() + ": push of step " + std::to_string(step_));
    if (!first.retryable()) {
      if (first.code == grpc::StatusCode::DEADLINE_EXCEEDED)
        COHORT_THROW(TimeoutError, "worker ", o_.worker, ": ", first.what());
      COHORT_THROW(DistributedError, "worker ", o_.worker, ": ", first.what());
    }
    int64_t samples = 0;
    with_retries(
        c, "push step " + std::to_string(step_),
        [&] {
          open_push(c);
          for (size_t p = 0; p < pieces_.size(); ++p) {
            if (pieces_[p].server != c.index()) continue;
            core::Tensor g = params_[pieces_[p].tensor].grad();
            write_piece(c, p, g.defined() ? g.contiguous() : g);
          }
          check(finish_push(c), "server " + c.name() + ": push of step " + std::to_string(step_));
          samples = c.push_reply.samples();
        },
        /*reconnect_first=*/true);
    return samples;
  }

  void heartbeats() {
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

PsWorker::PsWorker(std::vector<core::Tensor> params, const std::vector<std::string>& names,
                   ClientOptions o)
    : impl_(std::make_unique<Impl>(std::move(params), names, std::move(o))) {}
PsWorker::~PsWorker() = default;
void PsWorker::pull(int64_t step) { impl_->pull(step); }
void PsWorker::begin_step(int64_t step, double lr, int64_t samples, bool during_backward) {
  impl_->begin_step(step, lr, samples, during_backward);
}
void PsWorker::push_all() { impl_->push_all(); }
StepResult PsWorker::finish_step() { return impl_->finish_step(); }
void PsWorker::leave() { impl_->leave(); }
const std::vector<Piece>& PsWorker::pieces() const { return impl_->pieces(); }
int64_t PsWorker::bytes_per_step() const { return impl_->bytes_per_step(); }

}  // namespace cohort::ps
