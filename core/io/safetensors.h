// safetensors files: 8-byte little-endian header length, a JSON header mapping each tensor name to
// {dtype, shape, data_offsets}, then the raw little-endian bytes. Readable by PyTorch's and Hugging
// Face's safetensors loaders. Also SHA-256 of files and atomic, fsynced writes.
#pragma once

#include <map>
#include <string>

#include "core/tensor/tensor.h"

namespace cohort::core::io {

using TensorMap = std::map<std::string, Tensor>;

// The largest JSON header read (the reference implementation's limit, 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

// Writes tensors (moved to CPU, made contiguous) to `path` directly; callers wanting atomicity
// write to a temporary name and rename (see write_file_atomic). Throws IoError naming the path.
// With `sha256`, also the hex SHA-256 of the bytes written.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      std::string* sha256 = nullptr);
// Reads every tensor; throws IoError naming the path, the tensor and the problem for malformed
// files (a header past kMaxSafetensorsHeader, a field of the wrong type, a shape whose size
// overflows or whose bytes are not exactly its data_offsets inside the file).
// With `mapped`, the file is mapped copy-on-write and the tensors are views of it (where their
// data is aligned): reading a slice touches only its pages, and the mapping goes with the last
// tensor.
TensorMap load_safetensors(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr,
                           bool mapped = false);

// A dtype's safetensors name ("F32"), and the reverse (false for a name we do not read).
const char* st_dtype(DType d);
bool parse_dtype(const std::string& name, DType& d);

// Hex SHA-256 of a file's bytes.
std::string sha256_file(const std::string& path);
// Hex SHA-256 of bytes in memory.
std::string sha256_hex(const std::string& bytes);
// fsync a file or directory by path; throws IoError on failure.
void fsync_path(const std::string& path);

}  // namespace cohort::core::io
