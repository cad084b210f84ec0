// `cohort store OP KEY [VALUE]`: one request to a job's TcpStore from a shell, as a worker of the
// job (COHORT_STORE, COHORT_TOKEN or COHORT_TOKEN_FILE): for scripts that coordinate beside a job,
// and to see what a store holds while debugging one.
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

struct StoreCommandOptions {
  std::string op;  // get, set, add, check, wait, delete
  std::vector<std::string> args;
  std::string address;  // default COHORT_STORE
  double timeout_s = 30;
};

// Prints the answer (get: the value; add: the new value; check: 1 or 0; delete: 1 or 0) and
// returns 0; check returns 1 when a key is missing. Throws ConfigError for bad arguments,
// AuthError without a token or when the store refuses it.
int store_command(const StoreCommandOptions& options);

}  // namespace cohort::launcher
