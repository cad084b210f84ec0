// NpyArray: data.dataset npy's inputs and targets. A header that parses must describe exactly the
// file's bytes, and every row it promises must be readable.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/data/npy.h"
#include "core/util/error.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cohort::fuzz::MemFile f(data, size);
  try {
    cohort::core::data::NpyArray a(f.path());
    const int64_t per = a.row_numel();
    if (per > (1 << 20)) return 0;
    std::vector<float> row(static_cast<size_t>(per));
    std::vector<int64_t> ints(static_cast<size_t>(per));
    for (int64_t r = 0; r < a.rows() && r < 64; ++r) {
      a.row_as_float(r, row.data());
      if (a.header().kind != 'f') a.row_as_int64(r, ints.data());
    }
  } catch (const cohort::IoError&) {
  }
  return 0;
}
