// The job's secret and the challenge-response that proves a client holds it: the server sends a
// fresh random nonce, the client answers HMAC-SHA256(secret, context | nonce | worker), and only
// then gets a session id for its later calls. The secret itself never goes on the wire.
#pragma once

#include <string>

namespace cohort::ps {

// `n` bytes from OpenSSL's CSPRNG.
std::string random_bytes(size_t n);
// A new secret for a job: 32 random bytes as 64 hex digits (what COHORT_PS_SECRET holds).
std::string new_secret();
std::string to_hex(const std::string& bytes);

// The client's answer to `nonce`.
std::string auth_proof(const std::string& secret, const std::string& nonce, int worker);
// Compares in time independent of where the strings differ.
bool proofs_equal(const std::string& a, const std::string& b);

}  // namespace cohort::ps
