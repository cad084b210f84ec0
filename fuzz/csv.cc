// CsvDataset: data.dataset csv's table, with the last column as target, and by name.
#include <cstddef>
#include <cstdint>

#include "core/data/files.h"
#include "core/util/error.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cohort::fuzz::MemFile f(data, size);
  for (const char* target : {"", "y", "1"}) {
    try {
      cohort::core::data::CsvDataset d(f.path(), target);
      // Every row it accepted is a whole row of numbers and a class.
      auto b = d.get_batch({0, d.size() - 1});
      if (b.target.data_ptr<int64_t>()[0] < 0) __builtin_trap();
    } catch (const cohort::IoError&) {
    }
  }
  return 0;
}
