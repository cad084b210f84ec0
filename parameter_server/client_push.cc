// PsWorker's pushes: each parameter's gradient to the servers holding its pieces, as autograd
// produces it or all at once after clipping, over a gRPC stream or a server's doorbell; a push
// that breaks is sent again whole.
#include <cstring>

#include "collectives/shared_memory.h"
#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "parameter_server/client_impl.h"
#include "parameter_server/shard.h"

namespace cohort::ps {

using namespace client_detail;

void GrpcWorker::on_gradient(size_t i) {
  if (streaming_ && !sent_[i]) send_param(i);
}

void GrpcWorker::send_param(size_t i) {
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

void GrpcWorker::write_piece(Connection& c, size_t p, const core::Tensor& grad) {
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

void GrpcWorker::open_push(Connection& c) {
  c.push_broken = false;
  if (c.shared()) return;
  start_push(c, false);
}

void GrpcWorker::start_push(Connection& c, bool shared) {
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

void GrpcWorker::ring_push(Connection& c) {
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

grpc::Status GrpcWorker::pushed(Connection& c) {
  const grpc::Status s = answer(c);
  if (s.ok() && c.push_reply.pulled()) c.prefetched = step_ + 1;
  if (s.ok() && c.values) c.admitted = step_ + 1;
  return s;
}

grpc::Status GrpcWorker::finish_push(Connection& c) {
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

grpc::Status GrpcWorker::ring(Connection& c, DoorbellRequest req) {
  req.timeout_ms = o_.timeout.count();
  c.doorbell->ring(req);
  return answer(c);
}

grpc::Status GrpcWorker::answer(Connection& c) {
  const DoorbellReply r = c.doorbell->wait(o_.timeout + std::chrono::seconds(5));
  c.push_reply.set_version(r.version);
  c.push_reply.set_samples(r.samples);
  c.push_reply.set_pulled(r.pulled);
  return grpc::Status(r.code, r.message);
}

int64_t GrpcWorker::settle_push(Connection& c, const grpc::Status& s) {
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
}  // namespace cohort::ps
