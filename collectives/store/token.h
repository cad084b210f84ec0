// The job's token: the secret every store connection proves it holds (HMAC challenge-response,
// see tcp_store_protocol.h) and from which every other secret of the job is derived. It never
// travels over the network and is never written into the store.
//
// Two roles share one store. The launcher's agents hold the whole token and use the agent role,
// the only one that may touch the launcher's control keys ("launch/..."); the workers they start
// get only the worker part, a key derived from the token that cannot be turned back into it. So a
// worker's bug cannot post a failure or a heartbeat in an agent's name.
//
// Where a process finds its token (first match):
//   COHORT_TOKEN       64 hex digits (the job's token) or "worker:" + 64 hex digits (a worker's)
//   COHORT_TOKEN_FILE  a file holding the same text, owned by this user and not readable by others
// `cohort launch` makes a fresh token for a one-node job; jobs whose processes start on several
// nodes at once derive it from the user's key file (COHORT_KEY_FILE, default ~/.cohort/key,
// created 0600 on first use) and the job's id, which every node computes alike.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace cohort::collectives {

enum class StoreRole : uint8_t { kAgent = 1, kWorker = 2 };
const char* role_name(StoreRole role);

class JobToken {
 public:
  // No token: every use of it is an AuthError.
  JobToken() = default;
  bool empty() const { return bytes_.empty(); }
  // 32 random bytes.
  static JobToken generate();
  // "<64 hex>" or "worker:<64 hex>"; throws AuthError naming `where` for anything else.
  static JobToken parse(const std::string& text, const std::string& where);
  // COHORT_TOKEN, else COHORT_TOKEN_FILE, else nothing. Throws AuthError for a malformed value or a
  // file that others can read.
  static std::optional<JobToken> from_environment();
  // HMAC of `job_id` under the user's key file (created when missing): what every process of a
  // job started on many nodes at once (srun, several `cohort launch` agents) computes alike.
  static JobToken for_job(const std::string& job_id);

  // True when this is the job's token; false for a worker's part.
  bool is_job() const { return job_; }
  bool holds(StoreRole role) const { return job_ || role == StoreRole::kWorker; }
  // The part a worker gets: proves the worker role only.
  JobToken worker() const;
  // The role's 32-byte key; throws AuthError when this token does not hold the role.
  std::string role_key(StoreRole role) const;
  // A secret for another service (64 hex digits), the same from the job's token and from its
  // worker part: HMAC(worker key, label).
  std::string derive_secret(const std::string& label) const;
  // What COHORT_TOKEN holds.
  std::string to_text() const;

 private:
  JobToken(std::string bytes, bool job) : bytes_(std::move(bytes)), job_(job) {}
  std::string bytes_;  // the job's token, or the worker key
  bool job_ = false;
};

// Cryptographic helpers shared with the parameter servers' authentication (OpenSSL).
std::string random_bytes(size_t n);
std::string hmac_sha256(const std::string& key, const std::string& message);
std::string to_hex(const std::string& bytes);
// Compares in time independent of where the strings differ.
bool equal_in_constant_time(const std::string& a, const std::string& b);

// Reads a small secret file: owned by this user, a regular file, no group or other access, at
// most 4 KiB. Throws AuthError naming `what` and the path otherwise. Returns the trimmed text.
std::string read_private_file(const std::string& path, const std::string& what);

}  // namespace cohort::collectives
