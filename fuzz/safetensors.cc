// load_safetensors: model.init_from and every checkpoint's tensors.
#include <cstddef>
#include <cstdint>

#include "core/io/safetensors.h"
#include "core/util/error.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cohort::fuzz::MemFile f(data, size);
  std::map<std::string, std::string> metadata;
  try {
    const auto tensors = cohort::core::io::load_safetensors(f.path(), &metadata);
    // Every tensor fits inside the file.
    size_t bytes = 0;
    for (const auto& [name, t] : tensors) bytes += t.nbytes();
    if (bytes > size) __builtin_trap();
  } catch (const cohort::IoError&) {
  }
  return 0;
}
