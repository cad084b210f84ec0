#include "parameter_server/shard.h"

#include <algorithm>
#include <cstring>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "core/util/threads.h"
#include "parameter_server/auth.h"

namespace cohort::ps {

using Clock = std::chrono::steady_clock;

Mode parse_mode(const std::string& name) {
  if (name == "sync") return Mode::kSync;
  if (name == "async") return Mode::kAsync;
  if (name == "bounded") return Mode::kBounded;
  COHORT_THROW(ConfigError, "parameter_server.mode '", name,
               "' is not one of sync, async, bounded");
}

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kSync:
      return "sync";
    case Mode::kAsync:
      return "async";
    case Mode::kBounded:
      return "bounded";
  }
  return "?";
}

Shard::Shard(ShardOptions o) : o_(std::move(o)) {
  COHORT_CHECK(o_.workers >= 1, "a parameter server needs at least 1 worker, got ", o_.workers);
  // What a killed predecessor (or any killed server of this user) left in /dev/shm.
  collectives::remove_orphaned_segments();
  for (int w = 0; w < o_.workers; ++w) {
    workers_.push_back(std::make_unique<Worker>());
    workers_.back()->seen = Clock::now();
  }
  if (!o_.clock_log.empty()) {
    clock_log_ = std::fopen(o_.clock_log.c_str(), "a");
    if (!clock_log_) COHORT_THROW(IoError, "cannot open the clock log ", o_.clock_log);
  }
  if (!o_.checkpoint_dir.empty()) restore();
}

Shard::~Shard() {
  if (clock_log_) std::fclose(clock_log_);
  if (!values_name_.empty()) collectives::unlink_segment(values_name_);
  for (auto& k : workers_)
    if (!k->segment_name.empty()) collectives::unlink_segment(k->segment_name);
}

int64_t Shard::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

size_t Shard::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pieces_.size();
}

std::unique_ptr<core::optim::Optimizer> Shard::make_optimizer(const core::Tensor& param) const {
  OptimizerSpec s = o_.optimizer;
  s.lr = 0;  // set by each push
  return core::optim::make_optimizer(s, {param});
}

void Shard::define(const std::string& key, const std::vector<int64_t>& shape,
                   const std::vector<float>& values) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pieces_.find(key);
  if (it != pieces_.end()) {
    COHORT_CHECK(it->second.param.sizes() == shape, "tensor ", key, " has shape ",
                 core::shape_str(it->second.param.sizes()), " on server ", o_.server, ", not the ",
                 core::shape_str(shape), " the worker sent");
    return;
  }
  Piece& p = pieces_.emplace(key, make_piece(core::from_vector(values, shape))).first->second;
  for (Block& b : p.blocks) b.updates = version_;
}

Shard::Piece Shard::make_piece(core::Tensor param) const {
  Piece piece;
  piece.param = std::move(param);
  piece.grad = core::empty(piece.param.sizes());
  const int64_t numel = piece.param.numel();
  for (int64_t begin = 0; begin < numel || begin == 0; begin += kBlockElements) {
    Block b;
    b.begin = begin;
    b.end = std::min(numel, begin + kBlockElements);
    b.received.assign(static_cast<size_t>(o_.workers), 0);
    b.applied.assign(static_cast<size_t>(o_.workers), 0);
    piece.blocks.push_back(std::move(b));
    if (numel == 0) break;
  }
  view_blocks(piece);
  for (Block& b : piece.blocks) b.optimizer = make_optimizer(b.param);
  piece.grads.resize(static_cast<size_t>(o_.workers));
  piece.received.assign(static_cast<size_t>(o_.workers), 0);
  piece.segment_offset.assign(static_cast<size_t>(o_.workers), -1);
  return piece;
}

void Shard::view_blocks(Piece& p) {
  core::autograd::NoGradGuard no_grad;
  const core::Tensor flat = p.param.view({p.param.numel()});
  for (Block& b : p.blocks) {
    core::Tensor v = flat.slice(0, b.begin, b.end);
    if (b.param.defined()) {
      b.param.set_(v);  // the optimiser holds this tensor: it follows
    } else {
      b.param = v;
    }
  }
}

Shard::Piece& Shard::piece(const std::string& key) {
  auto it = pieces_.find(key);
  COHORT_CHECK(it != pieces_.end(), "tensor ", key, " is not held by server ", o_.server);
  return it->second;
}

std::vector<int64_t> Shard::shape_of(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pieces_.find(key);
  COHORT_CHECK(it != pieces_.end(), "tensor ", key, " is not held by server ", o_.server);
  return it->second.param.sizes();
}

Shard::Worker& Shard::worker(int w) {
  COHORT_CHECK(w >= 0 && w < o_.workers, "worker ", w, " is not one of this job's ", o_.workers,
               " workers");
  return *workers_[static_cast<size_t>(w)];
}

void Shard::touch(int w, int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  Worker& k = worker(w);
  k.seen = Clock::now();
  if (step >= 0 && k.clock < 0) k.clock = step;
  if (!k.live) {
    k.live = true;
    k.left = false;
    if (k.clock < 0 || step >= 0) k.clock = std::max<int64_t>(step, 0);
    std::fprintf(stderr, "server %d: worker %d rejoined at step %lld\n", o_.server, w,
                 static_cast<long long>(k.clock));
  }
  changed_.notify_all();
}

void Shard::leave(int w) {
  std::lock_guard<std::mutex> lock(mu_);
  Worker& k = worker(w);
  k.live = false;
  k.left = true;
  maybe_finish_sync_step_locked();
  changed_.notify_all();
}

int64_t Shard::min_clock_locked() const {
  int64_t m = -1;
  for (const auto& k : workers_)
    if (k->live && k->clock >= 0 && (m < 0 || k->clock < m)) m = k->clock;
  return m;
}

bool Shard::admissible_locked(int w, int64_t step) const {
  const Worker& k = *workers_[static_cast<size_t>(w)];
  switch (o_.mode) {
    case Mode::kSync:
      return !k.committed;
    case Mode::kAsync:
      return true;
    case Mode::kBounded: {
      const int64_t slowest = min_clock_locked();
      return slowest < 0 || step - slowest <= o_.staleness;
    }
  }
  return true;
}

bool Shard::admit(int w, int64_t step, collectives::Millis timeout,
                  const std::function<bool()>& cancelled) {
  std::unique_lock<std::mutex> lock(mu_);
  Worker& k = worker(w);
  const auto deadline = Clock::now() + timeout;
  while (!admissible_locked(w, step)) {
    if (cancelled && cancelled()) return false;
    if (Clock::now() >= deadline) {
      std::string waiting;
      for (int v = 0; v < o_.workers; ++v) {
        const Worker& o = *workers_[static_cast<size_t>(v)];
        if (v != w && o.live &&
            (o_.mode == Mode::kSync ? !o.committed : o.clock < step - o_.staleness))
          waiting += (waiting.empty() ? "" : ", ") + std::to_string(v);
      }
      COHORT_THROW(TimeoutError, "server ", o_.server, ": worker ", w, "'s step ", step, " waited ",
                   timeout.count() / 1000.0, " s for worker(s) ",
                   waiting.empty() ? std::string("none") : waiting, " (mode ", mode_name(o_.mode),
                   ")");
    }
    // Short slices: a cancelled call (the worker gave up) must not hold a thread for long.
    changed_.wait_for(lock, std::chrono::milliseconds(100));
    k.seen = Clock::now();  // a worker waiting here is alive
  }
  k.seen = Clock::now();
  if (clock_log_) {
    nlohmann::json live = nlohmann::json::array();
    for (int v = 0; v < o_.workers; ++v)
      if (workers_[static_cast<size_t>(v)]->live) live.push_back(v);
    const nlohmann::json line = {
        {"worker", w},         {"step", step}, {"min_clock", min_clock_locked()},
        {"version", version_}, {"live", live}, {"mode", mode_name(o_.mode)}};
    std::fprintf(clock_log_, "%s\n", line.dump().c_str());
    std::fflush(clock_log_);
  }
  return true;
}

bool Shard::stream_after_push(int w, int64_t step, collectives::Millis timeout,
                              const std::function<bool()>& cancelled, const BlockSink& send) {
  const auto deadline = Clock::now() + timeout;
  // Bounded: the staleness rule first (the worker's own clock is not what it waits for).
  if (o_.mode != Mode::kSync && !admit(w, step, timeout, cancelled)) return false;
  std::unique_lock<std::mutex> lock(mu_);
  Worker& k = worker(w);
  // Waits a slice for `changed_`; false when cancelled; throws once the deadline has passed.
  auto wait = [&](const std::function<std::string()>& for_what) {
    if (cancelled && cancelled()) return false;
    if (Clock::now() >= deadline)
      COHORT_THROW(TimeoutError, "server ", o_.server, ": worker ", w, "'s pull of step ", step,
                   " waited ", timeout.count() / 1000.0, " s for ", for_what());
    // Short slices: a cancelled call (the worker gave up) must not hold a thread for long.
    changed_.wait_for(lock, std::chrono::milliseconds(100));
    k.seen = Clock::now();  // a worker waiting here is alive
    return true;
  };
  // The update the values must include: sync, the step's that the worker's push of step - 1
  // takes part in; async and bounded, that push's own.
  int64_t target = 0;
  bool own_push = false;
  while (true) {
    if ((k.pushing || k.committed) && k.step == step - 1) {
      target = version_ + 1;
      own_push = true;
      break;
    }
    if (!k.pushing && !k.committed && k.clock >= step) {
      target = version_;  // applied already
      break;
    }
    if (!wait([&] { return "its push of step " + std::to_string(step - 1); })) return false;
  }
  auto is_ready = [&](const Block& b) {
    if (o_.mode == Mode::kSync) return b.updates >= target;
    // (A push that ended, committed or dropped, has nothing more to apply.)
    return !own_push || !k.pushing || k.step != step - 1 || b.applied[static_cast<size_t>(w)];
  };
  // The blocks not yet sent (pieces_ never erases, so its iterators stay valid unlocked).
  std::vector<std::pair<std::map<std::string, Piece>::iterator, size_t>> left;
  for (auto it = pieces_.begin(); it != pieces_.end(); ++it)
    for (size_t i = 0; i < it->second.blocks.size(); ++i) left.emplace_back(it, i);
  std::string key;
  std::vector<int64_t> shape;
  std::vector<float> values;
  while (!left.empty()) {
    // One pass sends every block ready by the time it gets there and keeps the rest, so a pull
    // costs a pass per wake-up, not one per block.
    size_t kept = 0;
    for (size_t j = 0; j < left.size(); ++j) {
      const auto [it, i] = left[j];
      const Block& b = it->second.blocks[i];
      if (!is_ready(b)) {
        left[kept++] = left[j];
        continue;
      }
      key = it->first;
      shape = it->second.param.sizes();
      const float* v = it->second.param.data_ptr<float>();
      values.assign(v + b.begin, v + b.end);
      const int64_t offset = b.begin;
      lock.unlock();
      const bool sent = send(key, shape, offset, values);
      lock.lock();
      if (!sent) return false;
    }
    const bool sent_any = kept < left.size();
    left.resize(kept);
    if (left.empty() || sent_any) continue;
    auto waiting_for = [&] {
      const auto& [it, i] = left.front();
      std::string who;
      for (int v = 0; v < o_.workers; ++v)
        if (workers_[static_cast<size_t>(v)]->live && !pushed_block_locked(it->second.blocks[i], v))
          who += (who.empty() ? "" : ", ") + std::to_string(v);
      return "worker(s) " + (who.empty() ? std::string("none") : who) + " to push their part";
    };
    if (!wait(waiting_for)) return false;
  }
  k.seen = Clock::now();
  return true;
}

Shard::Snapshot Shard::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  Snapshot s;
  s.version = version_;
  for (const auto& [key, p] : pieces_) {
    s.keys.push_back(key);
    s.shapes.push_back(p.param.sizes());
    const float* v = p.param.data_ptr<float>();
    s.values.emplace_back(v, v + p.param.numel());
  }
  return s;
}

void Shard::push_begin(int w, int64_t step, double lr, int64_t samples) {
  std::unique_lock<std::mutex> lock(mu_);
  Worker& k = worker(w);
  // A worker that streamed its values block by block can be here before the last worker's
  // commit has ended the step: that commit is on its way, or its worker will time out.
  const auto deadline = Clock::now() + 2 * o_.worker_timeout;
  while (k.committed && Clock::now() < deadline)
    changed_.wait_for(lock, std::chrono::milliseconds(100));
  COHORT_CHECK(!k.committed, "worker ", w, " pushed step ", step,
               " before its previous push was applied; pull first");
  k.pushing = true;
  k.step = step;
  k.lr = lr;
  k.samples = samples;
  k.seen = Clock::now();
  k.from_segment = false;
  k.pushed = 0;
  for (auto& [key, p] : pieces_) {
    p.received[static_cast<size_t>(w)] = 0;
    for (Block& b : p.blocks) {
      b.received[static_cast<size_t>(w)] = 0;
      b.applied[static_cast<size_t>(w)] = 0;
    }
  }
}

void Shard::push_chunk(int w, const std::string& key, int64_t offset, const float* values,
                       int64_t n) {
  std::vector<float>* buffer = nullptr;
  Piece* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Worker& k = worker(w);
    COHORT_CHECK(k.pushing, "worker ", w, " sent a gradient chunk outside a push");
    p = &piece(key);
    const int64_t numel = p->param.numel();
    COHORT_CHECK(offset >= 0 && n >= 0 && offset + n <= numel, "a chunk of tensor ", key,
                 " covers elements [", offset, ", ", offset + n, ") but it has ", numel);
    auto& g = p->grads[static_cast<size_t>(w)];
    if (g.size() != static_cast<size_t>(numel)) g.assign(static_cast<size_t>(numel), 0.f);
    buffer = &g;
    k.seen = Clock::now();
  }
  // Only this worker's push writes its buffers, and nothing reads a block of them before the
  // counts below (under the lock) say it has arrived.
  std::memcpy(buffer->data() + offset, values, static_cast<size_t>(n) * sizeof(float));
  std::lock_guard<std::mutex> lock(mu_);
  if (!worker(w).pushing) return;  // dropped meanwhile: its push is discarded
  p->received[static_cast<size_t>(w)] += n;
  worker(w).pushed += n;
  if (o_.mode == Mode::kSync) changed_.notify_all();  // (pace)
  if (n == 0) return;
  const auto first = static_cast<size_t>(offset / kBlockElements);
  const auto last = static_cast<size_t>((offset + n - 1) / kBlockElements) + 1;
  for (size_t i = first; i < last; ++i) {
    Block& b = p->blocks[i];
    b.received[static_cast<size_t>(w)] += std::min(b.end, offset + n) - std::max(b.begin, offset);
  }
  if (o_.mode == Mode::kSync) {
    update_ready_blocks_locked(p, first, last);
    return;
  }
  // Async and bounded: each block of the push is applied as soon as it is complete.
  for (size_t i = first; i < last; ++i) {
    Block& b = p->blocks[i];
    if (b.received[static_cast<size_t>(w)] == b.end - b.begin && !b.applied[static_cast<size_t>(w)])
      update_early_locked(*p, b, {w}, worker(w).lr);
  }
}

void Shard::pace(int w, int64_t slack, collectives::Millis max_wait) {
  if (o_.mode != Mode::kSync) return;
  std::unique_lock<std::mutex> lock(mu_);
  Worker& k = worker(w);
  auto behind = [&] {
    int64_t least = INT64_MAX;
    // (Workers on this node push through shared memory, all at once: not over the link.)
    for (const auto& v : workers_)
      if (v.get() != &k && v->live && !v->committed && !v->segment)
        least = std::min(least, v->pushing ? v->pushed : 0);
    return least;
  };
  const auto deadline = Clock::now() + max_wait;
  while (k.pushing && behind() != INT64_MAX && k.pushed > behind() + slack &&
         Clock::now() < deadline)
    changed_.wait_until(lock, deadline);
}

std::vector<int> Shard::expire_workers() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int> dropped;
  const auto now = Clock::now();
  for (int v = 0; v < o_.workers; ++v) {
    Worker& k = *workers_[static_cast<size_t>(v)];
    if (k.live && now - k.seen > o_.worker_timeout) {
      k.live = false;
      k.pushing = false;  // an unfinished push is discarded
      dropped.push_back(v);
    }
  }
  if (!dropped.empty()) {
    maybe_finish_sync_step_locked();
    changed_.notify_all();
  }
  return dropped;
}

std::vector<int> Shard::live_workers() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int> live;
  for (int v = 0; v < o_.workers; ++v)
    if (workers_[static_cast<size_t>(v)]->live) live.push_back(v);
  return live;
}

}  // namespace cohort::ps
