// load_config: the YAML experiment and a command-line override, split at the first newline-NUL
// ("\n\0") of the input.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/util/error.h"
#include "fuzz/fuzz_util.h"
#include "trainer/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find(std::string("\n\0", 2));
  const std::string yaml = input.substr(0, split);
  std::vector<std::string> overrides;
  if (split != std::string::npos) overrides.push_back(input.substr(split + 2));
  cohort::fuzz::MemFile f(reinterpret_cast<const uint8_t*>(yaml.data()), yaml.size());
  try {
    cohort::trainer::load_config(f.path(), overrides);
  } catch (const cohort::ConfigError&) {
  } catch (const cohort::IoError&) {
  }
  return 0;
}
