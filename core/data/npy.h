// NumPy's .npy format (versions 1-3): a magic string, a header dict {'descr', 'fortran_order',
// 'shape'}, then the raw array. NpyArray maps the file rather than reading it, so a large array
// costs no memory up front. Every field of the header is checked before it is used: the header is
// at most 64 KiB, the dtype one NumPy writes for a number (little-endian or single-byte float,
// signed or unsigned integer, bool), the shape's product may not overflow, and the file must hold
// exactly the bytes the header promises.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cohort::core::data {

struct NpyHeader {
  char kind = 'f';  // f float, i signed, u unsigned, b bool
  int itemsize = 4;
  std::vector<int64_t> shape;
  int64_t numel = 1;
  size_t data_offset = 0;  // bytes before the array
};

// Parses the first bytes of a .npy file (at least the whole header). Throws IoError naming
// `name` and what is wrong.
NpyHeader parse_npy_header(std::string_view bytes, const std::string& name);

class NpyArray {
 public:
  // Maps `path`; throws IoError naming the file.
  explicit NpyArray(const std::string& path);
  ~NpyArray();
  NpyArray(const NpyArray&) = delete;
  NpyArray& operator=(const NpyArray&) = delete;

  const NpyHeader& header() const { return h_; }
  const std::string& path() const { return path_; }
  int64_t rows() const { return h_.shape.empty() ? 1 : h_.shape[0]; }
  int64_t row_numel() const { return rows() ? h_.numel / rows() : 0; }
  bool is_integer() const { return h_.kind == 'i' || h_.kind == 'u' || h_.kind == 'b'; }
  // Row `row` (all elements of dim 0 index `row`) converted to float / to int64.
  void row_as_float(int64_t row, float* out) const;
  void row_as_int64(int64_t row, int64_t* out) const;

 private:
  std::string path_;
  NpyHeader h_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* data_ = nullptr;
};

}  // namespace cohort::core::data
