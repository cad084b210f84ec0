// read_idx: Fashion-MNIST's IDX files (gzipped or not) from data.path.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cohort::fuzz::MemFile f(data, size);
  std::vector<int64_t> dims;
  try {
    const auto bytes = cohort::core::data::read_idx(f.path(), dims);
    // What it returns is what the header promised.
    uint64_t total = 1;
    for (int64_t d : dims) total *= static_cast<uint64_t>(d);
    if (total != bytes.size()) __builtin_trap();
  } catch (const cohort::IoError&) {
  }
  return 0;
}
