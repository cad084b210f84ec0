#include "parameter_server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "core/util/error.h"

namespace cohort::ps {

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    COHORT_THROW(Error, "OpenSSL could not produce random bytes");
  return out;
}

std::string to_hex(const std::string& bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

std::string new_secret() { return to_hex(random_bytes(32)); }

std::string auth_proof(const std::string& secret, const std::string& nonce, int worker) {
  // The context string keeps a proof from being valid for any other protocol using the secret.
  const std::string message = "cohort-ps-auth-v1|" + nonce + "|" + std::to_string(worker);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
            reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len))
    COHORT_THROW(Error, "OpenSSL could not compute an HMAC");
  return std::string(reinterpret_cast<const char*>(mac), len);
}

bool proofs_equal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace cohort::ps
