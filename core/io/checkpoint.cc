// Atomic checkpoint directories with checksummed manifests.
#include "core/io/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace cohort::core::io {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "cohort-checkpoint-1";
const char* kFiles[] = {"model.safetensors", "optimizer.safetensors"};

// step_<N> directories under root, newest first.
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

}  // namespace

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
  save_safetensors((tmp / kFiles[0]).string(), model);
  save_safetensors((tmp / kFiles[1]).string(), optimizer);
  nlohmann::json m;
  m["format"] = kFormat;
  m["step"] = meta.step;
  m["epoch"] = meta.epoch;
  m["batch_in_epoch"] = meta.batch_in_epoch;
  m["samples_in_epoch"] = meta.samples_in_epoch;
  m["rng"] = {{"state", std::vector<uint64_t>(meta.rng.s.begin(), meta.rng.s.end())},
              {"have_spare", meta.rng.have_spare},
              {"spare", meta.rng.spare}};
  for (const char* f : kFiles) {
    fsync_path((tmp / f).string());
    m["sha256"][f] = sha256_file((tmp / f).string());
  }
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

  auto steps = list_steps(root);
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep, 1)); i < steps.size(); ++i)
    fs::remove_all(steps[i].second, ec);
  // Temporary directories of crashed writers are garbage.
  for (auto& e : fs::directory_iterator(root, ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind(".step_", 0) == 0 && e.path() != tmp) fs::remove_all(e.path(), ec);
  }
  return final_dir.string();
}

Checkpoint load_checkpoint(const std::string& dir) {
  Checkpoint c;
  c.path = dir;
  const fs::path d(dir);
  std::ifstream mf(d / "manifest.json");
  if (!mf) COHORT_THROW(IoError, "checkpoint ", dir, " has no manifest.json");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(mf);
    if (m.at("format") != kFormat)
      COHORT_THROW(IoError, "checkpoint ", dir, " has an unknown format");
    for (const char* f : kFiles) {
      std::string want = m.at("sha256").at(f);
      std::string got = sha256_file((d / f).string());
      if (want != got)
        COHORT_THROW(IoError, "checkpoint file ", (d / f).string(),
                     " does not match its SHA-256 in the manifest");
    }
    c.meta.step = m.at("step");
    c.meta.epoch = m.at("epoch");
    c.meta.batch_in_epoch = m.at("batch_in_epoch");
    c.meta.samples_in_epoch = m.value("samples_in_epoch", int64_t{-1});
    auto s = m.at("rng").at("state").get<std::vector<uint64_t>>();
    if (s.size() != 4) COHORT_THROW(IoError, "checkpoint ", dir, " has a malformed RNG state");
    std::copy(s.begin(), s.end(), c.meta.rng.s.begin());
    c.meta.rng.have_spare = m.at("rng").at("have_spare");
    c.meta.rng.spare = m.at("rng").at("spare");
  } catch (const nlohmann::json::exception& e) {
    COHORT_THROW(IoError, "checkpoint ", dir, " has a malformed manifest: ", e.what());
  }
  c.model = load_safetensors((d / kFiles[0]).string());
  c.optimizer = load_safetensors((d / kFiles[1]).string());
  return c;
}

std::optional<std::string> latest_checkpoint(const std::string& root) {
  for (auto& [step, path] : list_steps(root)) {
    try {
      load_checkpoint(path.string());
      return path.string();
    } catch (const IoError&) {
      continue;  // incomplete or corrupt: fall back to an older one
    }
  }
  return std::nullopt;
}

}  // namespace cohort::core::io
