// One parameter server's state, without the transport: its pieces of the model with their
// optimiser state, the workers it expects, and the rules of the three modes.
//   sync     a worker's push is applied once every live worker has pushed (averaged over those
//            that did); its next pull waits for that update. The update goes block by block
//            (kBlockElements of a piece): a block is updated as soon as every live worker has
//            pushed it, so its values can travel back while later blocks' gradients arrive
//            (stream_after_push). A worker that then fails its push has contributed to those
//            blocks, as a worker that dies after a whole push has.
//   async    each push is applied as it arrives, block by block; pulls never wait.
//   bounded  as async, but a worker's pull for step t waits while t - (the slowest live worker's
//            completed steps) > staleness.
// A worker that stays silent (no request, no heartbeat) for worker_timeout is dropped: it no
// longer holds back sync steps or the bounded clock; it rejoins by calling again. Thread-safe: the
// gRPC service calls it from many threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collectives/shared_memory.h"
#include "collectives/store/store.h"
#include "core/optim/optimizer.h"
#include "core/tensor/tensor.h"
#include "parameter_server/codec.h"

namespace cohort::ps {

enum class Mode { kSync, kAsync, kBounded };
Mode parse_mode(const std::string& name);  // throws ConfigError
const char* mode_name(Mode m);

// The learning rate in it is unused: it comes with each push (the workers own the schedule).
using core::optim::OptimizerSpec;

struct ShardOptions {
  int server = 0;
  Mode mode = Mode::kSync;
  int64_t staleness = 0;  // bounded
  int workers = 1;        // the job's workers, 0..workers-1, all expected from the start
  collectives::Millis worker_timeout{30000};
  OptimizerSpec optimizer;
  // Checkpoints of the pieces and their optimiser state every checkpoint_every updates (0: only
  // when asked); on construction the newest one under checkpoint_dir is restored.
  std::string checkpoint_dir;
  int64_t checkpoint_every = 0;
  int64_t checkpoint_keep = 2;
  // One JSON line per admitted pull: {"worker", "step", "min_clock", "live"}.
  std::string clock_log;
};

struct PushResult {
  int64_t version = 0;  // updates applied so far
  int64_t samples = 0;  // samples pushed by every worker so far
};

class Shard {
 public:
  explicit Shard(ShardOptions o);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  const ShardOptions& options() const { return o_; }
  bool restored() const { return restored_; }
  int64_t version() const;

  // Defines a piece with its initial values unless it exists (the first worker's values win; a
  // restored shard keeps its own). InvalidArgument when it exists with another shape.
  void define(const std::string& key, const std::vector<int64_t>& shape,
              const std::vector<float>& values);
  // InvalidArgument naming the key when it is unknown.
  std::vector<int64_t> shape_of(const std::string& key) const;
  size_t size() const;

  // Any call from `worker` (a heartbeat, a pull, a push) proves it alive; `step` is its clock
  // (steps completed), or -1 when the call does not say. InvalidArgument for a worker outside the
  // job.
  void touch(int worker, int64_t step);
  // The worker has finished training: it leaves the live set without being reported as lost.
  void leave(int worker);
  // Blocks until `worker` may compute step `step` under the mode's rule. Throws TimeoutError after
  // `timeout`, naming the workers it waited for; returns false if `cancelled()` became true.
  bool admit(int worker, int64_t step, collectives::Millis timeout,
             const std::function<bool()>& cancelled);
  // Every piece's key, shape and values at one version.
  struct Snapshot {
    int64_t version = 0;
    std::vector<std::string> keys;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<std::vector<float>> values;
  };
  Snapshot snapshot() const;

  // A push: begin, the chunks of every piece, commit. A chunk outside its piece or of an unknown
  // key is InvalidArgument; a commit that misses elements of some piece is InvalidArgument naming
  // it (in async and bounded mode nothing of that push is applied; in sync mode, the blocks every
  // worker had pushed in full may have been). Sync: a worker whose last push is not yet applied
  // (its values came block by block, before the last worker's commit) waits for that, up to
  // twice the worker timeout.
  void push_begin(int worker, int64_t step, double lr, int64_t samples);
  void push_chunk(int worker, const std::string& key, int64_t offset, const float* values,
                  int64_t n);
  // Sync: waits (at most max_wait) while this worker's push is more than `slack` elements ahead
  // of the live worker furthest behind (of those without a shared-memory segment), so that
  // streamed pushes share the link evenly.
  void pace(int worker, int64_t slack, collectives::Millis max_wait);
  PushResult push_commit(int worker);

  // The shared-memory data path of a worker on this node: a fresh segment (replacing any the
  // worker had) with a gradient area of `floats` floats and a values area after it, each piece at
  // the same offset in both. Throws InvalidArgument before any piece is defined.
  // Also the shared values: one segment holding the parameters themselves, which every worker on
  // this node maps, so that a worker admitted to a step copies the values out itself instead of
  // the server copying them into each worker's segment first. It starts with a SharedValues
  // header; piece i lies at float kSharedValuesOffset + offsets[i].
  struct SegmentLayout {
    std::string name;
    int64_t floats = 0;
    std::vector<std::string> keys;
    std::vector<int64_t> offsets, numels;
    std::string values_name;
  };
  // A sequence lock (Linux's seqlock): odd while an update writes the values. A reader copies,
  // then checks that the number is the even one it saw before; otherwise it asks the server for
  // a copy (copy_to_segment). A shared-values segment replaced by a new layout stays odd.
  struct SharedValues {
    std::atomic<uint64_t> seq{0};
  };
  static constexpr int64_t kSharedValuesOffset = 16;  // floats: a 64-byte header
  SegmentLayout attach_segment(int worker);
  // A push whose gradients for every piece the worker has left in its segment.
  PushResult push_from_segment(int worker, int64_t step, double lr, int64_t samples);
  // Copies every piece's values into the worker's segment (one version); returns the version.
  int64_t copy_to_segment(int worker);

  // Sync mode, the pull that a worker sends beside its push of step `step - 1` (which may still
  // be arriving): hands `send` each block of every piece once that push's update has been applied
  // to it, in the order blocks become ready, outside the lock. Other modes: admit, then every
  // block of one snapshot. Returns false when `cancelled()` or `send` returns false; throws
  // TimeoutError after `timeout`, naming the workers it waited for.
  using BlockSink = std::function<bool(const std::string& key, const std::vector<int64_t>& shape,
                                       int64_t offset, const std::vector<float>& values)>;
  bool stream_after_push(int worker, int64_t step, collectives::Millis timeout,
                         const std::function<bool()>& cancelled, const BlockSink& send);
  // The most elements of a piece updated (and streamed) as one block: a chunk on the wire.
  static constexpr int64_t kBlockElements = kChunkElements;

  // Drops the workers silent for longer than worker_timeout; returns their ids.
  std::vector<int> expire_workers();
  std::vector<int> live_workers() const;
  // Writes a checkpoint now (no-op without checkpoint_dir). Throws IoError.
  void checkpoint();

 private:
  // Elements [begin, end) of a piece, with an optimiser of their own: every optimiser here is
  // elementwise, so blocks stepped separately (each once per update) equal the piece stepped
  // whole.
  struct Block {
    int64_t begin = 0, end = 0;
    core::Tensor param;  // a view of the piece's param
    std::unique_ptr<core::optim::Optimizer> optimizer;
    // Updates applied: version_, or version_ + 1 once a sync update reached it early.
    int64_t updates = 0;
    std::vector<int64_t> received;  // per worker: elements of the push in progress
    std::vector<char> applied;      // per worker: that push has been applied here
  };
  struct Piece {
    core::Tensor param;
    core::Tensor grad;  // the averaged gradient, reused by every update
    std::vector<Block> blocks;
    std::vector<std::vector<float>> grads;  // per worker: the push in progress
    std::vector<int64_t> received;          // per worker: elements received in it
    std::vector<int64_t> segment_offset;    // per worker: in its segment, -1 without one
  };
  struct Worker {
    bool live = true, left = false;
    int64_t clock = 0;  // steps completed; -1 unknown (after a restore, until it calls)
    std::chrono::steady_clock::time_point seen;
    // The push in progress, then (sync) committed and waiting for the step to be applied.
    bool pushing = false, committed = false;
    int64_t step = 0, samples = 0;
    double lr = 0;
    int64_t pushed = 0;  // elements of the push in progress received so far
    // Its shared-memory segment, if it attached one, and whether the push is in it.
    collectives::Mapping segment;
    std::string segment_name;  // until unlinked (once both sides have it mapped)
    int64_t segment_floats = 0;
    bool from_segment = false;
  };
  Piece& piece(const std::string& key);
  Worker& worker(int w);
  Piece make_piece(core::Tensor param) const;
  static void view_blocks(Piece& p);  // (re)points the blocks' params into p.param
  // A piece's optimiser state as one tensor per buffer in the piece's shape (its blocks' laid
  // end to end), as checkpoints hold it; and back.
  static core::optim::OptimizerState piece_state(const Piece& p);
  static void load_piece_state(Piece& p, const core::optim::OptimizerState& state);
  const float* pushed_gradient(const Piece& p, int w) const;
  void check_segment_locked(int w);
  std::unique_ptr<core::optim::Optimizer> make_optimizer(const core::Tensor& param) const;
  // Under mu_: applies the committed pushes of `workers` (averaged) as one update.
  void apply_locked(const std::vector<int>& workers, double lr);
  void update_block(Piece& p, Block& b, const std::vector<int>& workers, double lr) const;
  // Sync, under mu_: updates blocks [first, last) of p (every piece's when p is null) that every
  // live worker has pushed in full, ahead of the rest of the step.
  void update_ready_blocks_locked(Piece* p, size_t first = 0, size_t last = SIZE_MAX);
  void update_early_locked(Piece& p, Block& b, const std::vector<int>& workers, double lr);
  bool pushed_block_locked(const Block& b, int worker) const;
  void maybe_finish_sync_step_locked();
  // Under mu_: (re)creates the shared values for `layout` unless they already match it.
  void share_values_locked(SegmentLayout& layout);
  SharedValues* shared_values() const;
  int64_t min_clock_locked() const;
  bool admissible_locked(int worker, int64_t step) const;
  void restore();
  void checkpoint_if_due();

  // Below this many elements an update is not worth a second thread.
  static constexpr int64_t kParallelElements = 1 << 16;

  ShardOptions o_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, Piece> pieces_;
  std::vector<std::unique_ptr<Worker>> workers_;
  int64_t version_ = 0, samples_ = 0, last_checkpoint_ = 0;
  bool restored_ = false;
  bool saved_ = false;  // a checkpoint holds version last_checkpoint_
  std::FILE* clock_log_ = nullptr;
  // The shared values (SegmentLayout), once a worker on this node attached; the pieces' params
  // are views of it, which keep it mapped.
  std::shared_ptr<collectives::Mapping> values_;
  std::string values_name_;  // unlinked when the shard goes (late workers still open it)
  int64_t values_floats_ = 0;
  size_t values_pieces_ = 0;
  std::mutex checkpoint_mu_;
};

}  // namespace cohort::ps
