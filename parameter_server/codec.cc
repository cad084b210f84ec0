#include "parameter_server/codec.h"

#include <cstring>

#include "core/tensor/dtype.h"
#include "core/util/error.h"

namespace cohort::ps {

Compression parse_compression(const std::string& name) {
  if (name == "none") return Compression::kNone;
  if (name == "bf16") return Compression::kBFloat16;
  COHORT_THROW(ConfigError, "parameter_server.compression '", name, "' is not one of none, bf16");
}

size_t element_bytes(Compression c) { return c == Compression::kBFloat16 ? 2 : 4; }

void encode(const float* values, int64_t n, Compression c, std::string* out) {
  const auto count = static_cast<size_t>(n);
  out->resize(count * element_bytes(c));
  if (c == Compression::kNone) {
    if (count > 0) std::memcpy(out->data(), values, count * sizeof(float));  // values may be null
    return;
  }
  auto* dst = reinterpret_cast<uint16_t*>(out->data());
  for (size_t i = 0; i < count; ++i) dst[i] = core::BFloat16(values[i]).bits;
}

int64_t decoded_count(const std::string& bytes, Compression c) {
  const size_t e = element_bytes(c);
  COHORT_CHECK(bytes.size() % e == 0, "a chunk of ", bytes.size(),
               " bytes is not a whole number of ", e, "-byte elements");
  return static_cast<int64_t>(bytes.size() / e);
}

void decode(const std::string& bytes, Compression c, float* out) {
  const auto count = static_cast<size_t>(decoded_count(bytes, c));
  if (c == Compression::kNone) {
    std::memcpy(out, bytes.data(), count * sizeof(float));
    return;
  }
  const auto* src = reinterpret_cast<const uint16_t*>(bytes.data());
  for (size_t i = 0; i < count; ++i) {
    const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(out + i, &u, sizeof u);
  }
}

}  // namespace cohort::ps
