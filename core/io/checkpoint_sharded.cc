// Sharded checkpoints (format 3) and the reader of every format.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <tuple>

#include "core/autograd/grad_mode.h"
#include "core/io/checkpoint.h"
#include "core/io/checkpoint_detail.h"
#include "core/ops/ops.h"

namespace cohort::core::io {
namespace fs = std::filesystem;
using namespace detail;

namespace {

constexpr int kMaxWorld = 1 << 20;
constexpr int64_t kMaxElements = int64_t{1} << 40;
const char* kParts[] = {"model", "optimizer"};

std::string shard_file(int rank) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "shard_%05d.safetensors", rank);
  return buf;
}

std::string piece_key(int part, const std::string& name, int64_t begin) {
  return std::string(kParts[part]) + "/" + name + "@" + std::to_string(begin);
}

}  // namespace

std::string sharded_tmp_dir(const std::string& root, int64_t step, const std::string& run_id) {
  // Every rank names the same directory; the run id keeps two runs sharing a root apart.
  return (fs::path(root) / (".step_" + std::to_string(step) + ".tmp-" +
                            (run_id.empty() ? std::string("job") : run_id)))
      .string();
}

void prepare_sharded_dir(const std::string& tmp) {
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) COHORT_THROW(IoError, "cannot create ", tmp, ": ", ec.message());
}

std::string write_checkpoint_shard(const std::string& tmp, int rank, const ShardedState& state) {
  TensorMap tensors;
  nlohmann::json entry;
  entry["rank"] = rank;
  const std::vector<Piece>* parts[] = {&state.model, &state.optimizer};
  for (int part = 0; part < 2; ++part) {
    nlohmann::json list = nlohmann::json::array();
    for (const Piece& p : *parts[part]) {
      COHORT_CHECK(p.data.defined() && p.data.dim() == 1, "checkpoint piece ", p.name,
                   " must be a 1-D tensor");
      const std::string key = piece_key(part, p.name, p.begin);
      COHORT_CHECK(!tensors.count(key), "checkpoint piece ", key, " given twice");
      tensors[key] = p.data;
      list.push_back({{"name", p.name},
                      {"shape", p.shape},
                      {"dtype", st_dtype(p.data.dtype())},
                      {"begin", p.begin},
                      {"end", p.begin + p.data.numel()}});
    }
    entry[kParts[part]] = std::move(list);
  }
  const std::string path = (fs::path(tmp) / shard_file(rank)).string();
  std::string digest;
  save_safetensors(path, tensors, {}, &digest);
  fsync_path(path);
  entry["sha256"] = digest;
  return entry.dump();
}

std::string commit_sharded_checkpoint(const std::string& root, const std::string& tmp,
                                      const std::vector<std::string>& entries,
                                      const CheckpointMeta& meta, int64_t keep) {
  nlohmann::json m;
  m["format"] = kFormat3;
  write_meta(meta, m);
  m["world_size"] = entries.size();
  nlohmann::json tensors = {{"model", nlohmann::json::object()},
                            {"optimizer", nlohmann::json::object()}};
  // The entries came from the other ranks through the store: a malformed one is an error naming
  // its rank, not a JSON exception.
  for (size_t r = 0; r < entries.size(); ++r) try {
      const nlohmann::json e = nlohmann::json::parse(entries[r]);
      if (!is_hex_digest(e.at("sha256")))
        COHORT_THROW(DistributedError, "rank ", r, " sent a checkpoint entry without a SHA-256");
      m["sha256"][shard_file(static_cast<int>(r))] = e.at("sha256");
      for (const char* part : kParts)
        for (const auto& p : e.at(part)) {
          auto& t = tensors[part][p.at("name").get<std::string>()];
          if (t.is_null()) t = {{"shape", p.at("shape")}, {"dtype", p.at("dtype")}};
          COHORT_CHECK(t["shape"] == p.at("shape") && t["dtype"] == p.at("dtype"),
                       "ranks disagree on ", part, " tensor ", p.at("name").get<std::string>(),
                       "'s shape or dtype");
          t["pieces"].push_back({r, p.at("begin").get<int64_t>(), p.at("end").get<int64_t>()});
        }
    } catch (const nlohmann::json::exception& e) {
      COHORT_THROW(DistributedError, "rank ", r, " sent a malformed checkpoint entry: ", e.what());
    }
  // Each tensor must be tiled exactly: the writers' own contract, checked before it is final.
  for (const char* part : kParts)
    for (auto& [name, t] : tensors[part].items()) {
      int64_t numel = 1;
      for (const auto& d : t["shape"])
        if (!d.is_number_integer() || d.get<int64_t>() < 0 ||
            __builtin_mul_overflow(numel, d.get<int64_t>(), &numel))
          COHORT_THROW(DistributedError, part, " tensor ", name, " has a malformed shape");
      auto pieces = t["pieces"].get<std::vector<std::tuple<int64_t, int64_t, int64_t>>>();
      std::sort(pieces.begin(), pieces.end(),
                [](const auto& a, const auto& b) { return std::get<1>(a) < std::get<1>(b); });
      int64_t at = 0;
      for (auto& [r, b, e] : pieces) {
        COHORT_CHECK(b == at && e > b, part, " tensor ", name,
                     ": the ranks' pieces do not tile it");
        at = e;
      }
      COHORT_CHECK(at == numel, part, " tensor ", name, ": the ranks' pieces do not tile it");
      t["pieces"] = pieces;
    }
  m["tensors"] = tensors;
  m["manifest_sha256"] = manifest_digest(m);
  const fs::path dir(tmp);
  {
    std::ofstream mf(dir / "manifest.json");
    mf << m.dump(1) << "\n";
    if (!mf) COHORT_THROW(IoError, "cannot write ", (dir / "manifest.json").string());
  }
  fsync_path((dir / "manifest.json").string());
  fsync_path(tmp);
  const fs::path final_dir = fs::path(root) / ("step_" + std::to_string(meta.step));
  std::error_code ec;
  fs::remove_all(final_dir, ec);
  fs::rename(dir, final_dir, ec);
  if (ec)
    COHORT_THROW(IoError, "cannot rename ", tmp, " to ", final_dir.string(), ": ", ec.message());
  fsync_path(root);
  prune(root, final_dir, meta.run_id, keep, dir);
  return final_dir.string();
}

// --- reading ------------------------------------------------------------------------------------

struct CheckpointReader::Impl {
  struct Source {
    size_t file;
    int64_t begin, end;
    std::string key;
  };
  struct Info {
    Shape shape;
    DType dtype = DType::kFloat32;
    int64_t numel = 0;
    std::vector<Source> pieces;  // sorted, tiling [0, numel)
  };
  std::map<std::string, Info> info[2];
  std::map<std::string, Shape> shapes[2];
  std::vector<std::string> files;
  mutable std::vector<std::optional<TensorMap>> loaded;
  mutable std::mutex mu;

  const TensorMap& file(size_t i) const {
    std::lock_guard<std::mutex> lock(mu);
    if (!loaded[i]) loaded[i] = load_safetensors(files[i], nullptr, /*mapped=*/true);
    return *loaded[i];
  }
};

CheckpointReader::~CheckpointReader() = default;
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;

CheckpointReader::CheckpointReader(const std::string& dir)
    : path_(dir), impl_(std::make_unique<Impl>()) {
  const fs::path d(dir);
  auto corrupt = [&](const std::string& why) {
    COHORT_THROW(IoError, "checkpoint ", dir, " is corrupt: ", why);
  };
  std::ifstream mf(d / "manifest.json", std::ios::binary);
  if (!mf) COHORT_THROW(IoError, "checkpoint ", dir, " has no manifest.json");
  std::string text(kMaxShardedManifestBytes + 1, '\0');
  mf.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(mf.gcount()));
  if (text.size() > kMaxShardedManifestBytes) corrupt("its manifest.json is larger than 64 MiB");
  nlohmann::json m = nlohmann::json::parse(text, nullptr, false);
  if (m.is_discarded() || !m.is_object()) corrupt("its manifest.json is not a JSON object");
  // Every field is checked for type and range before it is used; what a JSON type error would
  // say names neither the checkpoint nor the field.
  auto integer = [&](const nlohmann::json& obj, const char* key, int64_t min,
                     int64_t max) -> int64_t {
    const auto it = obj.find(key);
    if (it == obj.end() || !it->is_number_integer())
      corrupt(std::string("manifest field '") + key + "' is missing or not an integer");
    const int64_t v = it->get<int64_t>();
    if (v < min)
      corrupt(std::string("manifest field '") + key + "' is " + std::to_string(v) +
              ", below its minimum " + std::to_string(min));
    if (v > max)
      corrupt(std::string("manifest field '") + key + "' is " + std::to_string(v) +
              ", above its maximum " + std::to_string(max));
    return v;
  };
  const auto format = m.find("format");
  if (format == m.end() || !format->is_string() ||
      (*format != kFormat3 && *format != kFormat2 && *format != kFormat1))
    corrupt("its manifest's format is not " + std::string(kFormat3));
  const bool sharded = *format == kFormat3;
  if (!sharded && text.size() > kMaxManifestBytes)
    corrupt("its manifest.json is larger than 1 MiB");
  if (*format != kFormat1) {
    const auto own = m.find("manifest_sha256");
    if (own == m.end() || !is_hex_digest(*own) || *own != manifest_digest(m))
      corrupt("manifest.json does not match its own checksum (edited or damaged)");
  }
  // The files: the one-writer pair, or one per rank.
  std::vector<std::string> names;
  if (sharded) {
    world_ = static_cast<int>(integer(m, "world_size", 1, kMaxWorld));
    for (int r = 0; r < world_; ++r) names.push_back(shard_file(r));
  } else {
    names = {"model.safetensors", "optimizer.safetensors"};
  }
  const auto sums = m.find("sha256");
  if (sums == m.end() || !sums->is_object()) corrupt("its manifest lists no checksums");
  if (sums->size() != names.size()) corrupt("its manifest lists checksums of other files");
  for (const std::string& f : names) {
    const auto want = sums->find(f);
    if (want == sums->end() || !is_hex_digest(*want))
      corrupt("its manifest has no valid SHA-256 for " + f);
    if (*want != sha256_file((d / f).string()))
      COHORT_THROW(IoError, "checkpoint file ", (d / f).string(),
                   " does not match its SHA-256 in the manifest");
    impl_->files.push_back((d / f).string());
  }
  impl_->loaded.resize(impl_->files.size());

  // Bounded so that the position checks below cannot overflow (2^40 steps is no run's).
  meta_.step = integer(m, "step", 0, kMaxElements);
  meta_.epoch = integer(m, "epoch", 0, INT64_MAX);
  meta_.batch_in_epoch = integer(m, "batch_in_epoch", 0, INT64_MAX);
  meta_.samples_in_epoch =
      m.contains("samples_in_epoch") ? integer(m, "samples_in_epoch", -1, INT64_MAX) : -1;
  // The directory is named after the step it holds; a manifest that disagrees was moved or
  // edited.
  const std::string name =
      d.filename().empty() ? d.parent_path().filename().string() : d.filename().string();
  if (name.rfind("step_", 0) == 0 && name != "step_" + std::to_string(meta_.step))
    corrupt("its manifest says step " + std::to_string(meta_.step) + " but it is " + name);
  // A step is up to 2^20 batches (train.grad_accum_steps): a position past that is no run's.
  if (meta_.batch_in_epoch > (meta_.step + 1) * (int64_t{1} << 20))
    corrupt("its manifest's batch_in_epoch " + std::to_string(meta_.batch_in_epoch) +
            " is past what " + std::to_string(meta_.step) + " steps can consume");
  const auto rng = m.find("rng");
  if (rng == m.end() || !rng->is_object()) corrupt("its manifest has no RNG state");
  const auto state = rng->find("state");
  if (state == rng->end() || !state->is_array() || state->size() != 4)
    corrupt("its manifest has a malformed RNG state");
  for (size_t i = 0; i < 4; ++i) {
    if (!(*state)[i].is_number_unsigned()) corrupt("its manifest has a malformed RNG state");
    meta_.rng.s[i] = (*state)[i].get<uint64_t>();
  }
  const auto have_spare = rng->find("have_spare");
  const auto spare = rng->find("spare");
  if (have_spare == rng->end() || !have_spare->is_boolean() || spare == rng->end() ||
      !spare->is_number())
    corrupt("its manifest has a malformed RNG state");
  meta_.rng.have_spare = have_spare->get<bool>();
  meta_.rng.spare = spare->get<double>();
  auto text_field = [&](const char* key, size_t max_bytes) -> std::string {
    const auto it = m.find(key);
    if (it == m.end()) return "";
    if (!it->is_string() || it->get_ref<const std::string&>().size() > max_bytes)
      corrupt(std::string("manifest field '") + key + "' is not a string of at most " +
              std::to_string(max_bytes) + " bytes");
    return it->get<std::string>();
  };
  meta_.run_id = text_field("run_id", 256);
  meta_.config = text_field("config", kMaxManifestBytes);

  if (!sharded) {
    // One file per part, each tensor whole: its header says what is there.
    for (int part = 0; part < 2; ++part)
      for (auto& [tname, t] : impl_->file(static_cast<size_t>(part))) {
        Impl::Info info{t.sizes(), t.dtype(), t.numel(), {}};
        if (t.numel() > 0) info.pieces.push_back({static_cast<size_t>(part), 0, t.numel(), tname});
        impl_->shapes[part][tname] = t.sizes();
        impl_->info[part][tname] = std::move(info);
      }
    return;
  }
  const auto tensors = m.find("tensors");
  if (tensors == m.end() || !tensors->is_object()) corrupt("its manifest lists no tensors");
  for (int part = 0; part < 2; ++part) {
    const auto list = tensors->find(kParts[part]);
    if (list == tensors->end() || !list->is_object())
      corrupt(std::string("its manifest lists no ") + kParts[part] + " tensors");
    for (auto& item : list->items()) {
      const std::string& tname = item.key();
      const nlohmann::json& t = item.value();
      auto bad = [&](const std::string& why) {
        corrupt(std::string(kParts[part]) + " tensor '" + tname.substr(0, 200) + "' " + why);
      };
      if (tname.empty() || tname.size() > 1024) bad("has no usable name");
      if (!t.is_object()) bad("is not described by an object");
      Impl::Info info;
      const auto shape = t.find("shape");
      if (shape == t.end() || !shape->is_array() || shape->size() > 8) bad("has a malformed shape");
      int64_t numel = 1;
      for (const auto& dim : *shape) {
        if (!dim.is_number_unsigned() || dim.get<uint64_t>() > uint64_t(kMaxElements))
          bad("has a malformed shape");
        // Each factor is at most 2^40 and so is the product so far: check before it can wrap.
        if (__builtin_mul_overflow(numel, dim.get<int64_t>(), &numel) || numel > kMaxElements)
          bad("has more than 2^40 elements");
        info.shape.push_back(dim.get<int64_t>());
      }
      info.numel = numel;
      const auto dtype = t.find("dtype");
      if (dtype == t.end() || !dtype->is_string() ||
          !parse_dtype(dtype->get<std::string>(), info.dtype))
        bad("has an unsupported dtype");
      const auto pieces = t.find("pieces");
      if (pieces == t.end() || !pieces->is_array()) bad("lists no pieces");
      int64_t at = 0;
      for (const auto& p : *pieces) {
        if (!p.is_array() || p.size() != 3 || !p[0].is_number_unsigned() ||
            !p[1].is_number_integer() || !p[2].is_number_integer())
          bad("has a malformed piece");
        const uint64_t file = p[0].get<uint64_t>();
        const int64_t b = p[1].get<int64_t>(), e = p[2].get<int64_t>();
        // In order, adjacent, inside the tensor: the pieces tile it exactly.
        if (file >= impl_->files.size() || b != at || e <= b || e > numel)
          bad("has pieces that do not tile it");
        info.pieces.push_back({static_cast<size_t>(file), b, e, piece_key(part, tname, b)});
        at = e;
      }
      if (at != numel) bad("has pieces that do not cover it");
      impl_->shapes[part][tname] = info.shape;
      impl_->info[part][tname] = std::move(info);
    }
  }
}

const std::map<std::string, Shape>& CheckpointReader::shapes(Part part) const {
  return impl_->shapes[static_cast<int>(part)];
}

Tensor CheckpointReader::read(Part part, const std::string& name) const {
  const auto& info = impl_->info[static_cast<int>(part)];
  const auto it = info.find(name);
  if (it == info.end())
    COHORT_THROW(IoError, "checkpoint ", path_, " has no ", kParts[static_cast<int>(part)],
                 " tensor '", name, "'");
  return read_range(part, name, 0, it->second.numel).view(it->second.shape);
}

Tensor CheckpointReader::read_range(Part part, const std::string& name, int64_t begin,
                                    int64_t end) const {
  const int p = static_cast<int>(part);
  const auto it = impl_->info[p].find(name);
  if (it == impl_->info[p].end())
    COHORT_THROW(IoError, "checkpoint ", path_, " has no ", kParts[p], " tensor '", name, "'");
  const Impl::Info& info = it->second;
  COHORT_CHECK(0 <= begin && begin <= end && end <= info.numel, "checkpoint ", path_, ": range [",
               begin, ", ", end, ") of ", name, " is outside its ", info.numel, " elements");
  autograd::NoGradGuard guard;
  Tensor out = empty({end - begin}, TensorOptions(info.dtype));
  for (const Impl::Source& s : info.pieces) {
    const int64_t lo = std::max(begin, s.begin), hi = std::min(end, s.end);
    if (lo >= hi) continue;
    const TensorMap& file = impl_->file(s.file);
    const auto t = file.find(s.key);
    // The file's own header (verified by its checksum, but written by whoever wrote it) must
    // hold the piece the manifest promises, as a flat tensor of its dtype and length.
    if (t == file.end() || t->second.dtype() != info.dtype || t->second.numel() != s.end - s.begin)
      COHORT_THROW(IoError, "checkpoint ", path_, " is corrupt: ", impl_->files[s.file],
                   " does not hold ", s.key, " as its manifest says");
    out.narrow(0, lo - begin, hi - lo)
        .copy_(t->second.contiguous().view({-1}).narrow(0, lo - s.begin, hi - lo));
  }
  return out;
}

TensorMap CheckpointReader::read_all(Part part) const {
  TensorMap out;
  for (auto& [name, shape] : shapes(part)) out[name] = read(part, name);
  return out;
}

}  // namespace cohort::core::io
