// safetensors reader/writer and file helpers.
#include "core/io/safetensors.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/autograd/grad_mode.h"

namespace cohort::core::io {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

const char* st_dtype(DType d) {
  switch (d) {
    case DType::kFloat32:
      return "F32";
    case DType::kFloat64:
      return "F64";
    case DType::kInt64:
      return "I64";
    case DType::kInt32:
      return "I32";
    case DType::kUInt8:
      return "U8";
    case DType::kBool:
      return "BOOL";
    case DType::kBFloat16:
      return "BF16";
    case DType::kFloat16:
      return "F16";
  }
  return "?";
}

bool parse_dtype(const std::string& s, DType& d) {
  static const std::map<std::string, DType> m = {
      {"F32", DType::kFloat32},   {"F64", DType::kFloat64}, {"I64", DType::kInt64},
      {"I32", DType::kInt32},     {"U8", DType::kUInt8},    {"BOOL", DType::kBool},
      {"BF16", DType::kBFloat16}, {"F16", DType::kFloat16}};
  auto it = m.find(s);
  if (it == m.end()) return false;
  d = it->second;
  return true;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  autograd::NoGradGuard g;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> cpu;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    COHORT_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    Tensor c = t.detach().to(Device::cpu()).contiguous();
    header[name] = {{"dtype", st_dtype(c.dtype())},
                    {"shape", c.sizes()},
                    {"data_offsets", {offset, offset + c.nbytes()}}};
    offset += c.nbytes();
    cpu.push_back(c);
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0)
    h.push_back(' ');  // keep the data 8-byte aligned, as the reference writer does
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) COHORT_THROW(IoError, "cannot write ", path);
  uint64_t n = h.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const Tensor& c : cpu)
    f.write(static_cast<const char*>(c.raw_data()), static_cast<std::streamsize>(c.nbytes()));
  f.flush();
  if (!f) COHORT_THROW(IoError, "writing ", path, " failed (disk full?)");
}

TensorMap load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) COHORT_THROW(IoError, "cannot open ", path);
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  uint64_t n = 0;
  if (size < 8 || !f.read(reinterpret_cast<char*>(&n), 8) || n > size - 8)
    COHORT_THROW(IoError, path, " is not a safetensors file (bad header length)");
  std::string h(n, '\0');
  f.read(h.data(), static_cast<std::streamsize>(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(h);
  } catch (const nlohmann::json::exception& e) {
    COHORT_THROW(IoError, path, " has a malformed safetensors header: ", e.what());
  }
  const uint64_t data_size = size - 8 - n;
  std::vector<char> data(data_size);
  f.read(data.data(), static_cast<std::streamsize>(data_size));
  if (!f) COHORT_THROW(IoError, path, " is truncated");
  TensorMap out;
  for (auto& [name, e] : header.items()) {
    if (name == "__metadata__") {
      if (metadata) *metadata = e.get<std::map<std::string, std::string>>();
      continue;
    }
    DType d;
    if (!e.contains("dtype") || !parse_dtype(e["dtype"].get<std::string>(), d))
      COHORT_THROW(IoError, path, ": tensor '", name, "' has an unsupported dtype");
    Shape shape = e.at("shape").get<Shape>();
    auto off = e.at("data_offsets").get<std::vector<uint64_t>>();
    const uint64_t expect = static_cast<uint64_t>(shape_numel(shape)) * element_size(d);
    if (off.size() != 2 || off[1] < off[0] || off[1] > data_size || off[1] - off[0] != expect)
      COHORT_THROW(IoError, path, ": tensor '", name,
                   "' has data_offsets that do not match its shape");
    Tensor t = empty(shape, TensorOptions(d));
    if (expect) std::memcpy(t.raw_data(), data.data() + off[0], expect);
    out[name] = t;
  }
  return out;
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) COHORT_THROW(IoError, "cannot read ", path);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(f.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s.push_back(hex[md[i] >> 4]);
    s.push_back(hex[md[i] & 15]);
  }
  return s;
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) COHORT_THROW(IoError, "cannot open ", path, " to sync it");
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) COHORT_THROW(IoError, "fsync of ", path, " failed");
}

}  // namespace cohort::core::io
