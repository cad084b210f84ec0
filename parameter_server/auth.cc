#include "parameter_server/auth.h"

namespace cohort::ps {

std::string new_secret() { return to_hex(random_bytes(32)); }

std::string auth_proof(const std::string& secret, const std::string& nonce, int worker) {
  // The context string keeps a proof from being valid for any other protocol using the secret.
  return collectives::hmac_sha256(secret,
                                  "cohort-ps-auth-v1|" + nonce + "|" + std::to_string(worker));
}

}  // namespace cohort::ps
