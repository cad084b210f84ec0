// load_checkpoint's manifest.json: a checkpoint directory whose tensor files are sound and whose
// manifest is the input. The directory holds both formats' files (model and optimizer
// safetensors, and two ranks' shard files of a sharded checkpoint), so that format-3 manifests
// reach the checks of their pieces and the reads by range.
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/io/checkpoint.h"
#include "core/ops/ops.h"
#include "core/util/error.h"

namespace {

// A real checkpoint, written once; each input replaces its manifest.
const std::filesystem::path& checkpoint_dir() {
  static const std::filesystem::path dir = [] {
    char tmpl[] = "/tmp/cohort-fuzz-manifest-XXXXXX";
    static const std::filesystem::path root = ::mkdtemp(tmpl);
    // Removed when the fuzzer exits, so repeated runs leave nothing in /tmp.
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(root, ec);
    });
    const cohort::core::io::TensorMap model = {{"w", cohort::core::ones({2, 3})}};
    const cohort::core::io::TensorMap optimizer = {{"0.momentum", cohort::core::zeros({2, 3})}};
    const std::filesystem::path dir =
        cohort::core::io::save_checkpoint(root.string(), model, optimizer, {10, 1, 2, 64, {}}, 1);
    // The same model as a sharded checkpoint of two ranks, uneven pieces of each tensor, written
    // elsewhere and its files copied beside the others.
    namespace io = cohort::core::io;
    const std::filesystem::path other = root / "sharded";
    std::filesystem::create_directories(other);
    const std::string tmp = io::sharded_tmp_dir(other.string(), 10, "fuzz");
    io::prepare_sharded_dir(tmp);
    const cohort::core::Tensor w = cohort::core::arange(6).to(cohort::core::DType::kFloat32);
    std::vector<std::string> entries;
    for (int r = 0; r < 2; ++r) {
      io::ShardedState s;
      s.model.push_back({"w", {2, 3}, r == 0 ? 0 : 4, w.narrow(0, r == 0 ? 0 : 4, r == 0 ? 4 : 2)});
      s.optimizer.push_back({"0.momentum", {2, 3}, 3 * r, w.narrow(0, 3 * r, 3)});
      entries.push_back(io::write_checkpoint_shard(tmp, r, s));
    }
    const std::string sharded =
        io::commit_sharded_checkpoint(other.string(), tmp, entries, {10, 1, 2, 64, {}}, 1);
    for (const char* f : {"shard_00000.safetensors", "shard_00001.safetensors"})
      std::filesystem::copy_file(std::filesystem::path(sharded) / f, dir / f);
    // The files are the same bytes every time, so the manifests written here are seeds that stay
    // valid: COHORT_FUZZ_SEED_DIR=corpus/manifest ./fuzz_manifest -runs=0 refreshes them.
    if (const char* seeds = std::getenv("COHORT_FUZZ_SEED_DIR")) {
      std::filesystem::copy_file(dir / "manifest.json", std::filesystem::path(seeds) / "checkpoint",
                                 std::filesystem::copy_options::overwrite_existing);
      std::filesystem::copy_file(std::filesystem::path(sharded) / "manifest.json",
                                 std::filesystem::path(seeds) / "sharded",
                                 std::filesystem::copy_options::overwrite_existing);
    }
    return dir;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& dir = checkpoint_dir();
  {
    std::ofstream f(dir / "manifest.json", std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const auto c = cohort::core::io::load_checkpoint(dir.string());
    // What loads is in range and names its own directory.
    if (c.meta.step != 10 || c.meta.epoch < 0 || c.meta.batch_in_epoch < 0 ||
        c.meta.samples_in_epoch < -1)
      __builtin_trap();
  } catch (const cohort::IoError&) {
  }
  return 0;
}
