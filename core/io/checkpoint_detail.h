// Internal to core/io's checkpoint files: the manifest's formats and what the one-writer
// (checkpoint.cc) and sharded (checkpoint_sharded.cc) formats share.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"

namespace cohort::core::io::detail {

// Format 2 adds the manifest's own checksum; format 1 manifests (no such field) still load, with
// every field checked for its range and against the directory's name. Format 3 is sharded.
inline constexpr const char* kFormat1 = "cohort-checkpoint-1";
inline constexpr const char* kFormat2 = "cohort-checkpoint-2";
inline constexpr const char* kFormat3 = "cohort-checkpoint-3";
// A one-writer manifest is small; a sharded one lists every rank's pieces of every tensor.
inline constexpr size_t kMaxManifestBytes = 1 << 20;
inline constexpr size_t kMaxShardedManifestBytes = size_t{64} << 20;

// SHA-256 of the manifest's canonical text without its own checksum field.
std::string manifest_digest(nlohmann::json m);
bool is_hex_digest(const nlohmann::json& v);
// step_<N> directories under root, newest first.
std::vector<std::pair<int64_t, std::filesystem::path>> list_steps(const std::string& root);
// The run_id a manifest names ("" when none or unreadable): a cheap read for pruning.
std::string run_id_of(const std::filesystem::path& dir);
// Keeps the newest `keep` of run_id's checkpoints (final_dir among them) and removes the
// temporary directories of crashed writers other than own_tmp.
void prune(const std::string& root, const std::filesystem::path& final_dir,
           const std::string& run_id, int64_t keep, const std::filesystem::path& own_tmp);
void write_meta(const CheckpointMeta& meta, nlohmann::json& m);

}  // namespace cohort::core::io::detail
