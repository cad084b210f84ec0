// Atomic checkpoint directories with checksummed manifests.
#include "core/io/checkpoint.h"

#include "core/io/checkpoint_detail.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace cohort::core::io {
namespace fs = std::filesystem;
namespace detail {

// nlohmann's objects keep their keys sorted, so the text does not depend on the order a writer
// used.
std::string manifest_digest(nlohmann::json m) {
  m.erase("manifest_sha256");
  return sha256_hex(m.dump());
}

bool is_hex_digest(const nlohmann::json& v) {
  if (!v.is_string()) return false;
  const auto& s = v.get_ref<const std::string&>();
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

void write_meta(const CheckpointMeta& meta, nlohmann::json& m) {
  m["step"] = meta.step;
  m["epoch"] = meta.epoch;
  m["batch_in_epoch"] = meta.batch_in_epoch;
  m["samples_in_epoch"] = meta.samples_in_epoch;
  m["rng"] = {{"state", std::vector<uint64_t>(meta.rng.s.begin(), meta.rng.s.end())},
              {"have_spare", meta.rng.have_spare},
              {"spare", meta.rng.spare}};
  if (!meta.run_id.empty()) m["run_id"] = meta.run_id;
  if (!meta.config.empty()) m["config"] = meta.config;
}

std::vector<std::pair<int64_t, fs::path>> list_steps(const std::string& root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (auto& e : fs::directory_iterator(root, ec)) {
    std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step_", 0) != 0) continue;
    try {
      size_t used = 0;
      int64_t n = std::stoll(name.substr(5), &used);
      if (used == name.size() - 5) out.emplace_back(n, e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.first > b.first; });
  return out;
}

std::string run_id_of(const fs::path& dir) {
  std::ifstream f(dir / "manifest.json", std::ios::binary);
  std::string text;
  text.resize(kMaxShardedManifestBytes);
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(f.gcount()));
  const auto m = nlohmann::json::parse(text, nullptr, false);
  if (m.is_discarded() || !m.is_object()) return "";
  const auto it = m.find("run_id");
  return it != m.end() && it->is_string() ? it->get<std::string>() : "";
}

void prune(const std::string& root, const fs::path& final_dir, const std::string& run_id,
           int64_t keep, const fs::path& own_tmp) {
  std::error_code ec;
  // Newest first; another run's checkpoints are not this run's to prune.
  int64_t kept = 0;
  for (auto& [step, path] : list_steps(root)) {
    if (!run_id.empty() && path != final_dir && run_id_of(path) != run_id) continue;
    if (++kept > std::max<int64_t>(keep, 1)) fs::remove_all(path, ec);
  }
  // Temporary directories of crashed writers are garbage.
  for (auto& e : fs::directory_iterator(root, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(".step_", 0) == 0 && e.path() != own_tmp) fs::remove_all(e.path(), ec);
  }
}

}  // namespace detail

using namespace detail;

namespace {
const char* kFiles[] = {"model.safetensors", "optimizer.safetensors"};
}  // namespace

std::string checkpoint_run_id(const std::string& dir) { return run_id_of(dir); }

std::string save_checkpoint(const std::string& root, const TensorMap& model,
                            const TensorMap& optimizer, const CheckpointMeta& meta, int64_t keep) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) COHORT_THROW(IoError, "cannot create checkpoint.dir ", root, ": ", ec.message());
  const std::string name = "step_" + std::to_string(meta.step);
  const fs::path tmp = fs::path(root) / ("." + name + ".tmp-" + std::to_string(::getpid()));
  const fs::path final_dir = fs::path(root) / name;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  std::string digests[2];
  save_safetensors((tmp / kFiles[0]).string(), model, {}, &digests[0]);
  save_safetensors((tmp / kFiles[1]).string(), optimizer, {}, &digests[1]);
  nlohmann::json m;
  m["format"] = kFormat2;
  write_meta(meta, m);
  for (int i = 0; i < 2; ++i) {
    fsync_path((tmp / kFiles[i]).string());
    m["sha256"][kFiles[i]] = digests[i];
  }
  m["manifest_sha256"] = manifest_digest(m);
  {
    std::ofstream mf(tmp / "manifest.json");
    mf << m.dump(2) << "\n";
    if (!mf) COHORT_THROW(IoError, "cannot write ", (tmp / "manifest.json").string());
  }
  fsync_path((tmp / "manifest.json").string());
  fsync_path(tmp.string());
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec)
    COHORT_THROW(IoError, "cannot rename ", tmp.string(), " to ", final_dir.string(), ": ",
                 ec.message());
  fsync_path(root);
  prune(root, final_dir, meta.run_id, keep, tmp);
  return final_dir.string();
}

Checkpoint load_checkpoint(const std::string& dir) {
  CheckpointReader r(dir);
  Checkpoint c;
  c.path = dir;
  c.meta = r.meta();
  c.model = r.read_all(CheckpointReader::Part::kModel);
  c.optimizer = r.read_all(CheckpointReader::Part::kOptimizer);
  return c;
}

std::optional<std::string> latest_checkpoint(const std::string& root,
                                             std::vector<std::string>* skipped) {
  for (auto& [step, path] : list_steps(root)) {
    try {
      CheckpointReader verified(path.string());  // checksums and ranges, no tensor data
      return path.string();
    } catch (const IoError& e) {
      // Incomplete or corrupt: fall back to an older one, and say so.
      if (skipped) skipped->push_back(e.what());
    }
  }
  return std::nullopt;
}

}  // namespace cohort::core::io
