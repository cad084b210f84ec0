// Shard's updates: a block is updated as soon as every worker it waits for has pushed it (sync),
// or as each push arrives (async, bounded); the optimiser averages the pushed gradients in its
// own pass over memory where it can.
#include <algorithm>
#include <cstring>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "core/util/threads.h"
#include "parameter_server/shard.h"

namespace cohort::ps {

using Clock = std::chrono::steady_clock;

namespace {

// Holds the shared values' sequence lock odd while an update writes them (nothing without them).
class ValuesWrite {
 public:
  explicit ValuesWrite(Shard::SharedValues* values)
      : values_(values), seq_(values ? values->seq.load(std::memory_order_relaxed) : 0) {
    if (!values_) return;
    values_->seq.store(seq_ + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
  ~ValuesWrite() {
    if (values_) values_->seq.store(seq_ + 2, std::memory_order_release);
  }
  ValuesWrite(const ValuesWrite&) = delete;
  ValuesWrite& operator=(const ValuesWrite&) = delete;

 private:
  Shard::SharedValues* values_;
  uint64_t seq_;
};

}  // namespace

bool Shard::pushed_block_locked(const Block& b, int w) const {
  const Worker& k = *workers_[static_cast<size_t>(w)];
  return k.committed || (k.pushing && b.received[static_cast<size_t>(w)] == b.end - b.begin);
}

void Shard::update_ready_blocks_locked(Piece* only, size_t first, size_t last) {
  // The step's workers: every one that committed its push (also one that has left since: its
  // step counts, as in apply_locked) and every live one with a push under way. Leaving out a
  // worker that committed and then left updated blocks from the others' gradients alone.
  std::vector<int> from;
  for (int v = 0; v < o_.workers; ++v) {
    const Worker& k = *workers_[static_cast<size_t>(v)];
    if (k.committed) {
      from.push_back(v);
      continue;
    }
    if (!k.live) continue;
    if (!k.pushing) return;  // a live worker has not begun its push
    from.push_back(v);
  }
  if (from.empty()) return;
  const double lr = workers_[static_cast<size_t>(from[0])]->lr;
  auto scan = [&](Piece& p, size_t begin, size_t end) {
    for (size_t i = begin; i < std::min(end, p.blocks.size()); ++i) {
      Block& b = p.blocks[i];
      if (b.updates != version_) continue;  // updated already
      if (std::all_of(from.begin(), from.end(), [&](int v) { return pushed_block_locked(b, v); }))
        update_early_locked(p, b, from, lr);
    }
  };
  if (only) {
    scan(*only, first, last);
  } else {
    for (auto& [key, p] : pieces_) scan(p, 0, p.blocks.size());
  }
}

void Shard::update_early_locked(Piece& p, Block& b, const std::vector<int>& from, double lr) {
  {
    ValuesWrite writing(shared_values());
    update_block(p, b, from, lr);
  }
  b.updates = version_ + 1;
  for (int v : from) b.applied[static_cast<size_t>(v)] = 1;
  changed_.notify_all();
}

PushResult Shard::push_commit(int w) {
  std::unique_lock<std::mutex> lock(mu_);
  Worker& k = worker(w);
  COHORT_CHECK(k.pushing, "worker ", w, " committed a push it never began");
  k.pushing = false;
  for (auto& [key, p] : pieces_)
    COHORT_CHECK(p.received[static_cast<size_t>(w)] == p.param.numel(), "worker ", w,
                 "'s push of step ", k.step, " has ", p.received[static_cast<size_t>(w)],
                 " of the ", p.param.numel(), " elements of tensor ", key);
  k.clock = std::max(k.clock, k.step + 1);
  k.seen = Clock::now();
  if (o_.mode == Mode::kSync) {
    k.committed = true;
    maybe_finish_sync_step_locked();
  } else {
    apply_locked({w}, k.lr);
  }
  PushResult r{version_, samples_};
  changed_.notify_all();
  lock.unlock();
  checkpoint_if_due();
  return r;
}

void Shard::maybe_finish_sync_step_locked() {
  if (o_.mode != Mode::kSync) return;
  std::vector<int> committed;
  for (int v = 0; v < o_.workers; ++v) {
    const Worker& k = *workers_[static_cast<size_t>(v)];
    if (k.committed) {
      committed.push_back(v);
    } else if (k.live) {
      // A live worker has not pushed yet; the workers, or what they have pushed, changed.
      update_ready_blocks_locked(nullptr);
      return;
    }
  }
  if (committed.empty()) return;
  // Workers agree on the learning rate (the same schedule at the same step); take the first's.
  apply_locked(committed, workers_[static_cast<size_t>(committed[0])]->lr);
  for (int v : committed) workers_[static_cast<size_t>(v)]->committed = false;
}

void Shard::apply_locked(const std::vector<int>& from, double lr) {
  // Blocks have optimisers of their own, so they update independently: largest first over the
  // kernels' thread pool, which hands each idle thread the next one. In sync mode every worker
  // waits for this update, so the cores they leave idle are there to take. (Sync: blocks every
  // worker had pushed are updated already.)
  // Async and bounded: the blocks this push has not reached yet (the streamed push applied
  // each as it arrived).
  std::vector<std::pair<Piece*, Block*>> order;
  int64_t total = 0;
  for (auto& [key, p] : pieces_)
    for (Block& b : p.blocks) {
      const bool pending = o_.mode == Mode::kSync ? b.updates == version_
                                                  : !b.applied[static_cast<size_t>(from.front())];
      if (pending) {
        order.emplace_back(&p, &b);
        total += b.end - b.begin;
      }
      b.updates = version_ + 1;
      for (int v : from) b.applied[static_cast<size_t>(v)] = 1;
    }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second->end - a.second->begin > b.second->end - b.second->begin;
  });
  auto update = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto [p, b] = order[static_cast<size_t>(i)];
      update_block(*p, *b, from, lr);
    }
  };
  if (!order.empty()) {  // (nothing left: readers of the shared values need not retry)
    ValuesWrite writing(shared_values());
    if (total >= kParallelElements) {
      core::parallel_for(static_cast<int64_t>(order.size()), 1, update);
    } else {
      update(0, static_cast<int64_t>(order.size()));  // too small to repay waking a thread
    }
  }
  for (int v : from) samples_ += workers_[static_cast<size_t>(v)]->samples;
  ++version_;
  changed_.notify_all();
}

void Shard::update_block(Piece& p, Block& b, const std::vector<int>& from, double lr) const {
  core::autograd::NoGradGuard no_grad;
  std::vector<const float*> grads;
  for (int w : from) grads.push_back(pushed_gradient(p, w) + b.begin);
  b.optimizer->set_lr(lr);
  if (b.optimizer->step_mean(grads)) return;  // averaged in the update's own pass
  const float scale = 1.0f / static_cast<float>(from.size());
  const float* first = grads[0];
  const int64_t numel = b.end - b.begin;
  if (from.size() == 1) {
    // The pushed buffer itself (nothing else touches it until the update is done).
    b.param.set_grad(core::from_blob(const_cast<float*>(first), {numel}, core::DType::kFloat32));
  } else {
    // The sum in worker order, scaled in the last pass: one pass per worker after the first.
    float* out = p.grad.data_ptr<float>() + b.begin;
    const auto n = static_cast<size_t>(numel);
    for (size_t i = 1; i < from.size(); ++i) {
      const float* acc = i == 1 ? first : out;
      const float* in = grads[i];
      if (i + 1 == from.size()) {
        for (size_t j = 0; j < n; ++j) out[j] = (acc[j] + in[j]) * scale;
      } else {
        for (size_t j = 0; j < n; ++j) out[j] = acc[j] + in[j];
      }
    }
    b.param.set_grad(core::from_blob(out, {numel}, core::DType::kFloat32));
  }
  b.optimizer->step();
  b.param.set_grad(core::Tensor());
}

const float* Shard::pushed_gradient(const Piece& p, int w) const {
  const Worker& k = *workers_[static_cast<size_t>(w)];
  if (k.from_segment)
    return static_cast<const float*>(k.segment.addr()) + p.segment_offset[static_cast<size_t>(w)];
  return p.grads[static_cast<size_t>(w)].data();
}

}  // namespace cohort::ps
