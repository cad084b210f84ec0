// The .npy header parser (a small, strict reader of the dict NumPy writes) and the mapped array.
#include "core/data/npy.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "core/tensor/dtype.h"
#include "core/util/error.h"

namespace cohort::core::data {
namespace {

constexpr size_t kMaxHeader = 64 * 1024;
// The largest array we map: 1 TiB, far past any dataset a node holds, and far from overflow.
constexpr uint64_t kMaxBytes = uint64_t{1} << 40;

[[noreturn]] void bad(const std::string& name, const std::string& why) {
  COHORT_THROW(IoError, name, " is not a .npy array Cohort can read: ", why);
}

// The value text after 'key': in the header dict, up to the next top-level comma or brace.
std::string_view field(std::string_view dict, std::string_view key, const std::string& name) {
  std::string quoted1 = "'" + std::string(key) + "'", quoted2 = "\"" + std::string(key) + "\"";
  size_t at = dict.find(quoted1);
  size_t len = quoted1.size();
  if (at == std::string_view::npos) {
    at = dict.find(quoted2);
    len = quoted2.size();
  }
  if (at == std::string_view::npos) bad(name, "its header has no '" + std::string(key) + "'");
  size_t p = at + len;
  while (p < dict.size() && (dict[p] == ' ')) ++p;
  if (p >= dict.size() || dict[p] != ':')
    bad(name, "its header is malformed near '" + std::string(key) + "'");
  ++p;
  while (p < dict.size() && dict[p] == ' ') ++p;
  size_t end = p;
  int depth = 0;
  while (end < dict.size()) {
    const char c = dict[end];
    if (c == '(') ++depth;
    if (c == ')') {
      if (depth == 0) break;
      --depth;
    }
    if (depth == 0 && (c == ',' || c == '}')) break;
    ++end;
  }
  if (depth != 0 || end >= dict.size())
    bad(name, "its header is malformed near '" + std::string(key) + "'");
  if (dict[end] == ')') ++end;
  return dict.substr(p, end - p);
}

}  // namespace

NpyHeader parse_npy_header(std::string_view bytes, const std::string& name) {
  static const char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0)
    bad(name, "it does not start with NumPy's magic bytes");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad(name, "it is shorter than its header");
    header_len = 0;
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    prefix = 12;
  } else {
    bad(name, "format version " + std::to_string(major) + " is unknown (1 to 3 are)");
  }
  if (header_len > kMaxHeader) bad(name, "its header is longer than 64 KiB");
  if (bytes.size() < prefix + header_len) bad(name, "it is shorter than its header");
  const std::string_view dict = bytes.substr(prefix, header_len);
  NpyHeader h;
  h.data_offset = prefix + header_len;

  std::string_view descr = field(dict, "descr", name);
  if (descr.size() < 4 || (descr.front() != '\'' && descr.front() != '"') ||
      descr.back() != descr.front())
    bad(name, "its dtype is not a simple type string (structured arrays are not supported)");
  descr = descr.substr(1, descr.size() - 2);
  if (descr.size() < 3) bad(name, "its dtype '" + std::string(descr) + "' is not a number type");
  const char order = descr[0];
  h.kind = descr[1];
  const std::string size_text(descr.substr(2));
  if (size_text.size() != 1 || size_text[0] < '1' || size_text[0] > '8')
    bad(name, "its dtype '" + std::string(descr) + "' is not a number type");
  h.itemsize = size_text[0] - '0';
  const bool ok = (h.kind == 'f' && (h.itemsize == 2 || h.itemsize == 4 || h.itemsize == 8)) ||
                  ((h.kind == 'i' || h.kind == 'u') &&
                   (h.itemsize == 1 || h.itemsize == 2 || h.itemsize == 4 || h.itemsize == 8)) ||
                  (h.kind == 'b' && h.itemsize == 1);
  if (!ok) bad(name, "its dtype '" + std::string(descr) + "' is not a float, integer or bool type");
  if (order == '>' && h.itemsize > 1)
    bad(name, "it is big-endian ('" + std::string(descr) + "'); save it little-endian (astype('<" +
                  std::string(1, h.kind) + size_text + "'))");
  if (order != '<' && order != '|' && order != '=' && order != '>')
    bad(name, "its dtype '" + std::string(descr) + "' has an unknown byte order");

  const std::string_view fortran = field(dict, "fortran_order", name);
  if (fortran == "True")
    bad(name, "it is in Fortran order; save it C-ordered (np.ascontiguousarray)");
  if (fortran != "False") bad(name, "its fortran_order is neither True nor False");

  std::string_view shape = field(dict, "shape", name);
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
    bad(name, "its shape is not a tuple");
  shape = shape.substr(1, shape.size() - 2);
  uint64_t total = 1;
  size_t p = 0;
  while (p < shape.size()) {
    while (p < shape.size() && (shape[p] == ' ' || shape[p] == ',')) ++p;
    if (p >= shape.size()) break;
    uint64_t v = 0;
    size_t digits = 0;
    while (p < shape.size() && shape[p] >= '0' && shape[p] <= '9') {
      if (++digits > 15) bad(name, "a dimension of its shape is too large");
      v = v * 10 + static_cast<uint64_t>(shape[p] - '0');
      ++p;
    }
    if (digits == 0) bad(name, "its shape holds something other than numbers");
    if (h.shape.size() >= 8) bad(name, "it has more than 8 dimensions");
    h.shape.push_back(static_cast<int64_t>(v));
    if (v != 0 && total > kMaxBytes / v) bad(name, "its shape's size passes 1 TiB");
    total *= v;
  }
  if (total > kMaxBytes / static_cast<uint64_t>(h.itemsize))
    bad(name, "its shape's size passes 1 TiB");
  h.numel = static_cast<int64_t>(total);
  return h;
}

NpyArray::NpyArray(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) COHORT_THROW(IoError, "cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    COHORT_THROW(IoError, path, " is not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  std::string head(std::min(size, kMaxHeader + 12), '\0');
  if (!head.empty() &&
      ::pread(fd, head.data(), head.size(), 0) != static_cast<ssize_t>(head.size())) {
    ::close(fd);
    COHORT_THROW(IoError, "cannot read ", path);
  }
  try {
    h_ = parse_npy_header(head, path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  const uint64_t want =
      h_.data_offset + static_cast<uint64_t>(h_.numel) * static_cast<uint64_t>(h_.itemsize);
  if (size != want) {
    ::close(fd);
    COHORT_THROW(IoError, path, " is ", size, " bytes but its header promises ", want,
                 " (truncated or padded)");
  }
  map_bytes_ = size;
  map_ = map_bytes_ ? ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    COHORT_THROW(IoError, "cannot map ", path);
  }
  data_ = static_cast<const unsigned char*>(map_) + h_.data_offset;
}

NpyArray::~NpyArray() {
  if (map_) ::munmap(map_, map_bytes_);
}

namespace {
template <typename Out>
void convert(const unsigned char* src, const NpyHeader& h, int64_t n, Out* out) {
  auto load = [&](auto t) {
    using T = decltype(t);
    for (int64_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, src + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
      out[i] = static_cast<Out>(v);
    }
  };
  switch (h.kind) {
    case 'f':
      if (h.itemsize == 2) {
        for (int64_t i = 0; i < n; ++i) {
          uint16_t b;
          std::memcpy(&b, src + 2 * i, 2);
          out[i] = static_cast<Out>(Float16::to_float(b));
        }
      } else if (h.itemsize == 4) {
        load(float{});
      } else {
        load(double{});
      }
      return;
    case 'i':
      if (h.itemsize == 1) load(int8_t{});
      if (h.itemsize == 2) load(int16_t{});
      if (h.itemsize == 4) load(int32_t{});
      if (h.itemsize == 8) load(int64_t{});
      return;
    default:  // 'u', 'b'
      if (h.itemsize == 1) load(uint8_t{});
      if (h.itemsize == 2) load(uint16_t{});
      if (h.itemsize == 4) load(uint32_t{});
      if (h.itemsize == 8) load(uint64_t{});
      return;
  }
}
}  // namespace

void NpyArray::row_as_float(int64_t row, float* out) const {
  COHORT_CHECK(row >= 0 && row < rows(), path_, ": row ", row, " out of range");
  const int64_t n = row_numel();
  convert(data_ + row * n * h_.itemsize, h_, n, out);
}

void NpyArray::row_as_int64(int64_t row, int64_t* out) const {
  COHORT_CHECK(row >= 0 && row < rows(), path_, ": row ", row, " out of range");
  // A float's conversion to an integer is undefined past the integer's range: never attempted.
  if (h_.kind == 'f') COHORT_THROW(IoError, path_, " holds floats where integers are expected");
  const int64_t n = row_numel();
  convert(data_ + row * n * h_.itemsize, h_, n, out);
}

}  // namespace cohort::core::data
