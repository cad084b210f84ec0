// PsWorker's data path to a server on the same node: the worker's segment of gradients and
// values, and (sync mode) parameters that view the server's own values.
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

bool GrpcWorker::copy_from_values(Connection& c) {
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

void GrpcWorker::copy_from_segment(Connection& c) {
  for (size_t p = 0; p < pieces_.size(); ++p)
    if (pieces_[p].server == c.index() && !aliased_[p])
      std::memcpy(params_[pieces_[p].tensor].data_ptr<float>() + pieces_[p].offset,
                  c.segment_values(p), static_cast<size_t>(pieces_[p].numel) * sizeof(float));
}

void GrpcWorker::alias(Connection& c) {
  if (!o_.alias_values || c.mode() != Mode::kSync || !c.values || c.aliased) return;
  // Odd: an update is writing (a dropped worker's late pull), or a new layout retired these
  // values for good (Shard::SharedValues); either way they are not the ones to compute with.
  if (static_cast<Shard::SharedValues*>(c.values->addr())->seq.load(std::memory_order_acquire) & 1)
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

void GrpcWorker::unalias(Connection& c) {
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

void GrpcWorker::attach(Connection& c) {
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
      COHORT_THROW(DistributedError, "server ", c.index(), "'s shared-memory segment lacks tensor ",
                   pieces_[p].key);
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
      std::fprintf(stderr, "worker %d: calls to parameter server %d stay on gRPC (%s)\n", o_.worker,
                   c.index(), e.what());
    }
  }
  if (c.doorbell && !reply.values().empty()) {
    try {
      c.values = std::make_shared<collectives::Mapping>(collectives::map_segment(
          reply.values(),
          static_cast<size_t>(Shard::kSharedValuesOffset + reply.floats()) * sizeof(float), false));
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
        param, core::from_blob(c.segment_grad(p), param.sizes(), core::DType::kFloat32, c.segment));
  }
}
}  // namespace cohort::ps
