#include "collectives/store/tcp_store_protocol.h"

#include <cstring>

namespace cohort::collectives::wire {
namespace {

std::string proof(const char* context, const std::string& role_key, const std::string& server_nonce,
                  const std::string& client_nonce, StoreRole role) {
  std::string message = context;
  message += '|';
  message += server_nonce;
  message += client_nonce;
  message += static_cast<char>(role);
  return hmac_sha256(role_key, message);
}

uint32_t read_u32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

std::string client_proof(const std::string& role_key, const std::string& server_nonce,
                         const std::string& client_nonce, StoreRole role) {
  return proof("cohort store client v1", role_key, server_nonce, client_nonce, role);
}

std::string server_proof(const std::string& role_key, const std::string& server_nonce,
                         const std::string& client_nonce, StoreRole role) {
  return proof("cohort store server v1", role_key, server_nonce, client_nonce, role);
}

std::string encode(uint8_t code, const Fields& fields) {
  size_t n = 1 + 4;
  for (const auto& f : fields) n += 4 + f.size();
  std::string out;
  out.reserve(4 + n);
  auto u32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  u32(static_cast<uint32_t>(n));
  out.push_back(static_cast<char>(code));
  u32(static_cast<uint32_t>(fields.size()));
  for (const auto& f : fields) {
    u32(static_cast<uint32_t>(f.size()));
    out += f;
  }
  return out;
}

bool decode(const char* body, size_t size, uint8_t& code, Fields& fields) {
  fields.clear();
  if (size < 5) return false;
  code = static_cast<uint8_t>(body[0]);
  const uint32_t n = read_u32(body + 1);
  // Each field takes at least its 4-byte length: a count beyond that is a lie, refused before
  // anything is reserved for it.
  if (n > (size - 5) / 4) return false;
  fields.reserve(n);
  size_t p = 5;
  for (uint32_t i = 0; i < n; ++i) {
    if (size - p < 4) return false;
    const uint32_t len = read_u32(body + p);
    p += 4;
    if (len > size - p) return false;
    fields.emplace_back(body + p, len);
    p += len;
  }
  return p == size;
}

}  // namespace cohort::collectives::wire
