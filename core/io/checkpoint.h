// Checkpoints: <root>/step_<N>/ holding manifest.json (step, epoch, data position, RNG state,
// SHA-256 of each file) and the tensors, either
//   format 2: model.safetensors and optimizer.safetensors, written by one process, or
//   format 3 (sharded): shard_<rank>.safetensors from every rank of the job, each holding pieces
//            of tensors (element ranges of their row-major flattening), and a manifest with every
//            tensor's global shape and dtype and which rank's file holds which range.
// A checkpoint is written under a temporary name, fsynced, then renamed, so a crash never leaves a
// half-written step_<N>. Readers verify every checksum and every range before using any of it,
// and read any format at any world size (CheckpointReader).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/io/safetensors.h"
#include "core/tensor/generator.h"

namespace cohort::core::io {

struct CheckpointMeta {
  int64_t step = 0;
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;  // batches of `epoch` already consumed
  // Samples of `epoch` consumed by the whole job (all ranks): lets a run resume on another world
  // size. -1 in checkpoints written before it existed.
  int64_t samples_in_epoch = -1;
  Generator::State rng{};
  // The run that wrote it (run.json's run_id; empty in older checkpoints): pruning keeps the
  // newest `keep` of its own run and never touches another run's.
  std::string run_id;
  // The writer's resolved config (YAML text; empty in older checkpoints), to check a resume.
  std::string config;
};

// A piece of a tensor that a rank writes: elements [begin, begin + data.numel()) of the
// tensor's row-major flattening; `data` is 1-D.
struct Piece {
  std::string name;
  Shape shape;  // the whole tensor's
  int64_t begin = 0;
  Tensor data;
};
struct ShardedState {
  std::vector<Piece> model, optimizer;
};

// Writing a sharded checkpoint, with every rank taking part:
//   1. every rank: tmp = sharded_tmp_dir(root, step, run_id) (the same path everywhere), and
//      rank 0 prepare_sharded_dir(tmp); then a barrier;
//   2. every rank: entry = write_checkpoint_shard(tmp, rank, state); entries go to rank 0;
//   3. rank 0: commit_sharded_checkpoint(root, tmp, entries in rank order, meta, keep).
// Every piece of every tensor must be written by exactly one rank.
std::string sharded_tmp_dir(const std::string& root, int64_t step, const std::string& run_id);
void prepare_sharded_dir(const std::string& tmp);
// Writes this rank's file (fsynced) and returns what the manifest needs of it (JSON text).
std::string write_checkpoint_shard(const std::string& tmp, int rank, const ShardedState& state);
// Checks that the entries cover every tensor exactly once, writes the manifest, renames the
// directory into place and prunes as save_checkpoint does. Returns the final directory.
std::string commit_sharded_checkpoint(const std::string& root, const std::string& tmp,
                                      const std::vector<std::string>& entries,
                                      const CheckpointMeta& meta, int64_t keep);

// Reads a checkpoint of any format. The constructor verifies the manifest, every file's
// checksum and (format 3) that the pieces tile every tensor exactly; it reads no tensor data.
// Throws IoError naming the checkpoint and the problem.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& dir);
  ~CheckpointReader();
  CheckpointReader(CheckpointReader&&) noexcept;
  const std::string& path() const { return path_; }
  const CheckpointMeta& meta() const { return meta_; }
  int world_size() const { return world_; }  // of the job that wrote it (1: format 2)
  enum class Part { kModel, kOptimizer };
  // The part's tensors and their shapes.
  const std::map<std::string, Shape>& shapes(Part part) const;
  // A whole tensor, or elements [begin, end) of its flattening (1-D); IoError for a name the
  // checkpoint lacks.
  Tensor read(Part part, const std::string& name) const;
  Tensor read_range(Part part, const std::string& name, int64_t begin, int64_t end) const;
  // Every tensor of a part, whole.
  TensorMap read_all(Part part) const;

 private:
  struct Impl;
  std::string path_;
  CheckpointMeta meta_;
  int world_ = 1;
  std::unique_ptr<Impl> impl_;
};

struct Checkpoint {
  std::string path;
  TensorMap model;
  TensorMap optimizer;
  CheckpointMeta meta;
};

// Writes a checkpoint and keeps the newest `keep` of meta.run_id's (all of them when it is empty,
// as older versions did). Returns its directory. Throws IoError.
std::string save_checkpoint(const std::string& root, const TensorMap& model,
                            const TensorMap& optimizer, const CheckpointMeta& meta, int64_t keep);
// Loads (any format, whole tensors) and verifies every checksum (the manifest's own included) and
// every manifest field's type and range (step, epoch and position not negative, the step matching
// the directory's name); throws IoError naming the checkpoint and what is wrong.
Checkpoint load_checkpoint(const std::string& dir);
// The run_id in a checkpoint's manifest, without verifying it ("" when there is none).
std::string checkpoint_run_id(const std::string& dir);
// The newest checkpoint under root that loads, if any; with `skipped`, why each newer one did not.
std::optional<std::string> latest_checkpoint(const std::string& root,
                                             std::vector<std::string>* skipped = nullptr);

}  // namespace cohort::core::io
