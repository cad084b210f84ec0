// read_image: image_folder's PNG and JPEG files, decoded grey and RGB and resized.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/data/image.h"
#include "core/util/error.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cohort::fuzz::MemFile f(data, size);
  for (int channels : {1, 3}) {
    try {
      const auto img = cohort::core::data::read_image(f.path(), channels);
      if (img.pixels.size() != static_cast<size_t>(img.height * img.width * channels))
        __builtin_trap();
      if (img.height * img.width > (1 << 22)) continue;
      std::vector<float> out(static_cast<size_t>(channels) * 5 * 7);
      cohort::core::data::resize_bilinear_chw(img, 5, 7, out.data());
    } catch (const cohort::IoError&) {
    }
  }
  return 0;
}
