// Checkpoints: <root>/step_<N>/ holding model.safetensors, optimizer.safetensors and manifest.json
// (step, epoch, data position, RNG state, SHA-256 of each file). A checkpoint is written under a
// temporary name, fsynced, then renamed, so a crash never leaves a half-written step_<N>.
#pragma once

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
// Loads and verifies every checksum (the manifest's own included) and every manifest field's type
// and range (step, epoch and position not negative, the step matching the directory's name);
// throws IoError naming the checkpoint and what is wrong.
Checkpoint load_checkpoint(const std::string& dir);
// The run_id in a checkpoint's manifest, without verifying it ("" when there is none).
std::string checkpoint_run_id(const std::string& dir);
// The newest checkpoint under root that loads, if any; with `skipped`, why each newer one did not.
std::optional<std::string> latest_checkpoint(const std::string& root,
                                             std::vector<std::string>* skipped = nullptr);

}  // namespace cohort::core::io
