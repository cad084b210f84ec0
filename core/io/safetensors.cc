// safetensors reader/writer and file helpers.
#include "core/io/safetensors.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::core::io {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

}  // namespace

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

namespace {

std::string hex_digest(EVP_MD_CTX* ctx) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s.push_back(hex[md[i] >> 4]);
    s.push_back(hex[md[i] & 15]);
  }
  return s;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata, std::string* sha256) {
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
  // The digest, when asked for, is taken of the bytes as they are written: no second pass.
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(nullptr, EVP_MD_CTX_free);
  if (sha256) {
    ctx.reset(EVP_MD_CTX_new());
    EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  }
  auto put = [&](const void* data, size_t bytes) {
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    if (ctx) EVP_DigestUpdate(ctx.get(), data, bytes);
  };
  uint64_t n = h.size();
  put(&n, 8);
  put(h.data(), h.size());
  for (const Tensor& c : cpu) put(c.raw_data(), c.nbytes());
  f.flush();
  if (!f) COHORT_THROW(IoError, "writing ", path, " failed (disk full?)");
  if (ctx) *sha256 = hex_digest(ctx.get());
}

TensorMap load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata,
                           bool mapped) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) COHORT_THROW(IoError, "cannot open ", path);
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  uint64_t n = 0;
  if (size < 8 || !f.read(reinterpret_cast<char*>(&n), 8) || n > size - 8 ||
      n > kMaxSafetensorsHeader)
    COHORT_THROW(IoError, path, " is not a safetensors file (bad header length)");
  std::string h(n, '\0');
  f.read(h.data(), static_cast<std::streamsize>(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(h);
  } catch (const nlohmann::json::exception& e) {
    COHORT_THROW(IoError, path, " has a malformed safetensors header: ", e.what());
  }
  if (!header.is_object())
    COHORT_THROW(IoError, path, " has a malformed safetensors header: not a JSON object");
  const uint64_t data_size = size - 8 - n;
  // The file's bytes after the header: read into memory, or mapped.
  std::vector<char> data;
  std::shared_ptr<void> mapping;
  const char* bytes = nullptr;
  if (mapped && data_size > 0) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) COHORT_THROW(IoError, "cannot open ", path);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) COHORT_THROW(IoError, "cannot map ", path);
    mapping = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
    bytes = static_cast<const char*>(p) + 8 + n;
  } else {
    data.resize(data_size);
    f.read(data.data(), static_cast<std::streamsize>(data_size));
    if (!f) COHORT_THROW(IoError, path, " is truncated");
    bytes = data.data();
  }
  TensorMap out;
  for (auto& item : header.items()) {
    const std::string& name = item.key();
    const nlohmann::json& e = item.value();
    // Every field is checked for its type before use: a JSON type error would name neither the
    // file nor the tensor.
    auto bad = [&](const std::string& what) {
      COHORT_THROW(IoError, path, ": tensor '", name.substr(0, 200), "' ", what);
    };
    if (name == "__metadata__") {
      if (!e.is_object()) bad("is not an object of strings");
      for (auto& [k, v] : e.items())
        if (!v.is_string()) bad("holds a non-string value for '" + k.substr(0, 200) + "'");
      if (metadata) *metadata = e.get<std::map<std::string, std::string>>();
      continue;
    }
    if (!e.is_object()) bad("is not described by an object");
    DType d;
    const auto dt = e.find("dtype");
    if (dt == e.end() || !dt->is_string() || !parse_dtype(dt->get<std::string>(), d))
      bad("has an unsupported dtype");
    const auto sh = e.find("shape");
    if (sh == e.end() || !sh->is_array() || sh->size() > 8) bad("has a malformed shape");
    Shape shape;
    uint64_t numel = 1;
    for (const auto& dim : *sh) {
      if (!dim.is_number_unsigned()) bad("has a shape entry that is not a non-negative integer");
      const uint64_t v = dim.get<uint64_t>();
      if (v > data_size || __builtin_mul_overflow(numel, v, &numel) || numel > data_size)
        bad("has a shape larger than the file's data");
      shape.push_back(static_cast<int64_t>(v));
    }
    const auto offs = e.find("data_offsets");
    if (offs == e.end() || !offs->is_array() || offs->size() != 2 ||
        !(*offs)[0].is_number_unsigned() || !(*offs)[1].is_number_unsigned())
      bad("has malformed data_offsets");
    const uint64_t begin = (*offs)[0].get<uint64_t>(), end = (*offs)[1].get<uint64_t>();
    uint64_t expect = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(element_size(d)), &expect) ||
        end < begin || end > data_size || end - begin != expect)
      bad("has data_offsets that do not match its shape");
    const char* src = bytes + begin;
    if (mapping && expect > 0 && reinterpret_cast<uintptr_t>(src) % element_size(d) == 0) {
      // A view of the mapping, which lives as long as any tensor of it.
      out[name] = from_blob(const_cast<char*>(src), shape, d, mapping);
      continue;
    }
    Tensor t = empty(shape, TensorOptions(d));
    if (expect) std::memcpy(t.raw_data(), src, expect);
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
  return hex_digest(ctx.get());
}

std::string sha256_hex(const std::string& bytes) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  EVP_DigestUpdate(ctx.get(), bytes.data(), bytes.size());
  return hex_digest(ctx.get());
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) COHORT_THROW(IoError, "cannot open ", path, " to sync it");
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) COHORT_THROW(IoError, "fsync of ", path, " failed");
}

}  // namespace cohort::core::io
