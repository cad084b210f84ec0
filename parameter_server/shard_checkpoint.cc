// A Shard's checkpoints: its pieces and their optimiser state (each piece's blocks joined into one
// tensor per buffer, so the files do not depend on the block size), written atomically every K
// updates, and the newest restored on construction.
#include <cstdio>
#include <map>

#include "core/io/checkpoint.h"
#include "core/ops/ops.h"
#include "parameter_server/shard.h"

namespace cohort::ps {

core::optim::OptimizerState Shard::piece_state(const Piece& p) {
  std::map<std::string, std::vector<core::Tensor>> parts;
  core::optim::OptimizerState state;
  for (const Block& b : p.blocks)
    for (auto& [name, t] : b.optimizer->state_dict()) {
      if (name == "step") {
        state[name] = t;  // the same in every block: each steps once per update
      } else {
        parts[name].push_back(t);
      }
    }
  for (auto& [name, ts] : parts) state[name] = core::cat(ts, 0).view(p.param.sizes());
  return state;
}

void Shard::load_piece_state(Piece& p, const core::optim::OptimizerState& state) {
  for (Block& b : p.blocks) {
    core::optim::OptimizerState part;
    for (const auto& [name, t] : state)
      part[name] = name == "step" ? t : t.reshape({t.numel()}).slice(0, b.begin, b.end);
    b.optimizer->load_state_dict(part);  // (it copies)
  }
}

void Shard::checkpoint_if_due() {
  if (o_.checkpoint_dir.empty() || o_.checkpoint_every <= 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (version_ - last_checkpoint_ < o_.checkpoint_every) return;
  }
  checkpoint();
}

void Shard::checkpoint() {
  if (o_.checkpoint_dir.empty()) return;
  std::lock_guard<std::mutex> one_at_a_time(checkpoint_mu_);
  core::io::TensorMap model, optimizer;
  core::io::CheckpointMeta meta;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Nothing to save before any worker has defined the model, nor twice for one version.
    if (pieces_.empty() || (saved_ && version_ == last_checkpoint_)) return;
    for (const auto& [key, p] : pieces_) {
      model[key] = p.param.clone();
      for (const auto& [name, t] : piece_state(p)) optimizer[key + "/" + name] = t.clone();
    }
    meta.step = version_;
    meta.samples_in_epoch = samples_;
    last_checkpoint_ = version_;
    saved_ = true;
  }
  // Written outside the lock: training goes on while the files are written and renamed.
  core::io::save_checkpoint(o_.checkpoint_dir, model, optimizer, meta, o_.checkpoint_keep);
}

void Shard::restore() {
  auto latest = core::io::latest_checkpoint(o_.checkpoint_dir);
  if (!latest) return;
  core::io::Checkpoint ck = core::io::load_checkpoint(*latest);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, t] : ck.model) {
    Piece piece = make_piece(t.to(core::DType::kFloat32).contiguous().clone());
    core::optim::OptimizerState state;
    const std::string prefix = key + "/";
    for (auto& [name, s] : ck.optimizer)
      if (name.rfind(prefix, 0) == 0) state[name.substr(prefix.size())] = s;
    if (!state.empty()) load_piece_state(piece, state);
    for (Block& b : piece.blocks) b.updates = ck.meta.step;
    pieces_.emplace(key, std::move(piece));
  }
  version_ = ck.meta.step;
  last_checkpoint_ = version_;
  saved_ = true;
  samples_ = std::max<int64_t>(0, ck.meta.samples_in_epoch);
  restored_ = true;
  // The workers' clocks are unknown until they call: none holds back the others meanwhile.
  for (auto& k : workers_) k->clock = -1;
  std::fprintf(stderr, "server %d: restored %zu tensors at version %lld from %s\n", o_.server,
               pieces_.size(), static_cast<long long>(version_), latest->c_str());
}

}  // namespace cohort::ps
