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

// Format 2 adds the manifest's own checksum; format 1 manifests (no such field) still load, with
// every field checked for its range and against the directory's name.
constexpr const char* kFormat = "cohort-checkpoint-2";
constexpr const char* kFormatV1 = "cohort-checkpoint-1";
constexpr size_t kMaxManifestBytes = 1 << 20;

// SHA-256 of the manifest's canonical text without its own checksum field (nlohmann's objects
// keep their keys sorted, so the text does not depend on the order a writer used).
std::string manifest_digest(nlohmann::json m) {
  m.erase("manifest_sha256");
  return sha256_hex(m.dump());
}

bool is_hex_digest(const nlohmann::json& v) {
  if (!v.is_string()) return false;
  const auto& s = v.get_ref<const std::string&>();
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}
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

// The run_id a checkpoint's manifest names ("" when it names none or cannot be read): a cheap read
// for pruning, not a verification.
std::string run_id_of(const fs::path& dir) {
  std::ifstream f(dir / "manifest.json", std::ios::binary);
  std::string text;
  text.resize(kMaxManifestBytes);
  f.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(f.gcount()));
  const auto m = nlohmann::json::parse(text, nullptr, false);
  if (m.is_discarded() || !m.is_object()) return "";
  const auto it = m.find("run_id");
  return it != m.end() && it->is_string() ? it->get<std::string>() : "";
}

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
  if (!meta.run_id.empty()) m["run_id"] = meta.run_id;
  if (!meta.config.empty()) m["config"] = meta.config;
  for (const char* f : kFiles) {
    fsync_path((tmp / f).string());
    m["sha256"][f] = sha256_file((tmp / f).string());
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

  // Newest first; another run's checkpoints are not this run's to prune.
  int64_t kept = 0;
  for (auto& [step, path] : list_steps(root)) {
    if (!meta.run_id.empty() && path != final_dir && run_id_of(path) != meta.run_id) continue;
    if (++kept > std::max<int64_t>(keep, 1)) fs::remove_all(path, ec);
  }
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
  auto corrupt = [&](const std::string& why) {
    COHORT_THROW(IoError, "checkpoint ", dir, " is corrupt: ", why);
  };
  std::ifstream mf(d / "manifest.json", std::ios::binary);
  if (!mf) COHORT_THROW(IoError, "checkpoint ", dir, " has no manifest.json");
  std::string text(kMaxManifestBytes + 1, '\0');
  mf.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(mf.gcount()));
  if (text.size() > kMaxManifestBytes) corrupt("its manifest.json is larger than 1 MiB");
  nlohmann::json m = nlohmann::json::parse(text, nullptr, false);
  if (m.is_discarded() || !m.is_object()) corrupt("its manifest.json is not a JSON object");
  // Every field is checked for type and range before it is used; what a JSON type error would
  // say names neither the checkpoint nor the field.
  auto integer = [&](const char* key, int64_t min) -> int64_t {
    const auto it = m.find(key);
    if (it == m.end() || !it->is_number_integer())
      corrupt(std::string("manifest field '") + key + "' is missing or not an integer");
    const int64_t v = it->get<int64_t>();
    if (v < min)
      corrupt(std::string("manifest field '") + key + "' is " + std::to_string(v) +
              ", below its minimum " + std::to_string(min));
    return v;
  };
  const auto format = m.find("format");
  if (format == m.end() || !format->is_string() || (*format != kFormat && *format != kFormatV1))
    corrupt("its manifest's format is not " + std::string(kFormat));
  if (*format == kFormat) {
    const auto own = m.find("manifest_sha256");
    if (own == m.end() || !is_hex_digest(*own) || *own != manifest_digest(m))
      corrupt("manifest.json does not match its own checksum (edited or damaged)");
  }
  const auto sums = m.find("sha256");
  if (sums == m.end() || !sums->is_object()) corrupt("its manifest lists no checksums");
  for (const char* f : kFiles) {
    const auto want = sums->find(f);
    if (want == sums->end() || !is_hex_digest(*want))
      corrupt(std::string("its manifest has no valid SHA-256 for ") + f);
    if (*want != sha256_file((d / f).string()))
      COHORT_THROW(IoError, "checkpoint file ", (d / f).string(),
                   " does not match its SHA-256 in the manifest");
  }
  c.meta.step = integer("step", 0);
  c.meta.epoch = integer("epoch", 0);
  c.meta.batch_in_epoch = integer("batch_in_epoch", 0);
  c.meta.samples_in_epoch = m.contains("samples_in_epoch") ? integer("samples_in_epoch", -1) : -1;
  // The directory is named after the step it holds; a manifest that disagrees was moved or
  // edited.
  const std::string name =
      d.filename().empty() ? d.parent_path().filename().string() : d.filename().string();
  if (name.rfind("step_", 0) == 0 && name != "step_" + std::to_string(c.meta.step))
    corrupt("its manifest says step " + std::to_string(c.meta.step) + " but it is " + name);
  // A step is up to 2^20 batches (train.grad_accum_steps): a position past that is no run's.
  if (c.meta.batch_in_epoch > (c.meta.step + 1) * (int64_t{1} << 20))
    corrupt("its manifest's batch_in_epoch " + std::to_string(c.meta.batch_in_epoch) +
            " is past what " + std::to_string(c.meta.step) + " steps can consume");
  const auto rng = m.find("rng");
  if (rng == m.end() || !rng->is_object()) corrupt("its manifest has no RNG state");
  const auto state = rng->find("state");
  if (state == rng->end() || !state->is_array() || state->size() != 4)
    corrupt("its manifest has a malformed RNG state");
  for (size_t i = 0; i < 4; ++i) {
    if (!(*state)[i].is_number_unsigned()) corrupt("its manifest has a malformed RNG state");
    c.meta.rng.s[i] = (*state)[i].get<uint64_t>();
  }
  const auto have_spare = rng->find("have_spare");
  const auto spare = rng->find("spare");
  if (have_spare == rng->end() || !have_spare->is_boolean() || spare == rng->end() ||
      !spare->is_number())
    corrupt("its manifest has a malformed RNG state");
  c.meta.rng.have_spare = have_spare->get<bool>();
  c.meta.rng.spare = spare->get<double>();
  auto text_field = [&](const char* key, size_t max_bytes) -> std::string {
    const auto it = m.find(key);
    if (it == m.end()) return "";
    if (!it->is_string() || it->get_ref<const std::string&>().size() > max_bytes)
      corrupt(std::string("manifest field '") + key + "' is not a string of at most " +
              std::to_string(max_bytes) + " bytes");
    return it->get<std::string>();
  };
  c.meta.run_id = text_field("run_id", 256);
  c.meta.config = text_field("config", kMaxManifestBytes);
  c.model = load_safetensors((d / kFiles[0]).string());
  c.optimizer = load_safetensors((d / kFiles[1]).string());
  return c;
}

std::optional<std::string> latest_checkpoint(const std::string& root,
                                             std::vector<std::string>* skipped) {
  for (auto& [step, path] : list_steps(root)) {
    try {
      load_checkpoint(path.string());
      return path.string();
    } catch (const IoError& e) {
      // Incomplete or corrupt: fall back to an older one, and say so.
      if (skipped) skipped->push_back(e.what());
    }
  }
  return std::nullopt;
}

}  // namespace cohort::core::io
