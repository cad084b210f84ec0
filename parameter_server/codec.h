// Tensor elements on the wire: float32 as is, or bfloat16 (half the bytes, 8 bits of mantissa,
// rounded to nearest even), both little-endian. Values travel in chunks of kChunkElements so that
// no message comes near gRPC's size limit however large the tensor.
#pragma once

#include <cstdint>
#include <string>

namespace cohort::ps {

enum class Compression { kNone, kBFloat16 };
Compression parse_compression(const std::string& name);  // none | bf16; throws ConfigError

// 256 KiB of float32: small enough that a sync server can update and send back the first
// blocks of a tensor while its last ones still arrive (Shard::kBlockElements, the same).
constexpr int64_t kChunkElements = 32 * 1024;

size_t element_bytes(Compression c);
// Replaces `out` with n encoded elements.
void encode(const float* values, int64_t n, Compression c, std::string* out);
// The number of elements `bytes` holds; InvalidArgument when it is not a whole number.
int64_t decoded_count(const std::string& bytes, Compression c);
void decode(const std::string& bytes, Compression c, float* out);

}  // namespace cohort::ps
