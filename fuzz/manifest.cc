// load_checkpoint's manifest.json: a checkpoint directory whose tensor files are sound and whose
// manifest is the input.
#include <stdlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>

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
    // The files are the same bytes every time, so the manifest written here is a seed that stays
    // valid: COHORT_FUZZ_SEED_DIR=corpus/manifest ./fuzz_manifest -runs=0 refreshes it.
    if (const char* seeds = std::getenv("COHORT_FUZZ_SEED_DIR"))
      std::filesystem::copy_file(dir / "manifest.json", std::filesystem::path(seeds) / "checkpoint",
                                 std::filesystem::copy_options::overwrite_existing);
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
