// The job's secret and the challenge-response that proves a client holds it: the server sends a
// fresh random nonce, the client answers HMAC-SHA256(secret, context | nonce | worker), and only
// then gets a session id for its later calls. The secret itself never goes on the wire, nor into
// the store: `cohort launch` derives it from the job's token (see collectives/store/token.h).
#pragma once

#include <string>

#include "collectives/store/token.h"

namespace cohort::ps {

using collectives::random_bytes;
using collectives::to_hex;

// The label under which the parameter servers' secret derives from the job's token.
inline constexpr const char* kSecretLabel = "parameter server";

// A new secret for a job: 32 random bytes as 64 hex digits (what COHORT_PS_SECRET holds).
std::string new_secret();

// The client's answer to `nonce`.
std::string auth_proof(const std::string& secret, const std::string& nonce, int worker);
// Compares in time independent of where the strings differ.
inline bool proofs_equal(const std::string& a, const std::string& b) {
  return collectives::equal_in_constant_time(a, b);
}

}  // namespace cohort::ps
