// JobToken::parse: COHORT_TOKEN and token files, as a user or an attacker sets them.
#include <cstddef>
#include <cstdint>
#include <string>

#include "collectives/store/token.h"
#include "core/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto t = cohort::collectives::JobToken::parse(text, "COHORT_TOKEN");
    // A parsed token round-trips and derives its keys.
    if (cohort::collectives::JobToken::parse(t.to_text(), "x").to_text() != t.to_text())
      __builtin_trap();
    t.role_key(cohort::collectives::StoreRole::kWorker);
  } catch (const cohort::AuthError&) {
  }
  return 0;
}
