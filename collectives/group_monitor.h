// GroupMonitor: what a process group tells its peers through the Store so that a stuck or failed
// collective ends in an error that names the culprit. Each rank publishes the last collective it
// entered ("progress/<rank>", at most every quarter second, from a background thread); a rank that
// fails posts its error once under "abort" so that the others stop waiting at once.
// Every backend (cpu, mpi, nccl) uses one per group.
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "collectives/store/store.h"

namespace cohort::collectives {

class GroupMonitor {
 public:
  // Talks to the store through a clone of `store`, so that reports and failure checks never wait
  // behind the program's own blocking calls on it.
  GroupMonitor(std::shared_ptr<Store> store, int rank, int size);
  // Publishes a last report (so that peers which time out later see how far this rank got) and
  // stops the reporter thread.
  ~GroupMonitor();
  GroupMonitor(const GroupMonitor&) = delete;
  GroupMonitor& operator=(const GroupMonitor&) = delete;

  // Records that this rank entered collective #seq; `op` must be a string literal.
  void entered(uint64_t seq, const char* op);

  // For a collective #seq that timed out: "; ranks that never entered it: 1, 3; rank 1 last
  // entered allreduce #4; rank 3 entered no collective", or "" when every peer entered it. Waits
  // a little over one report period first so that the peers' latest reports are in.
  std::string who_never_entered(uint64_t seq) const;

  // After an operation failed on this rank: posts the error as the group's first failure unless
  // another rank posted one before (or the error only echoes another rank's failure), and returns
  // the error the group should keep: `error` itself when this rank failed first, else a
  // DistributedError that also names the first failure. Never throws: the store may be what
  // failed.
  std::exception_ptr fail(std::exception_ptr error);
  // The failure another rank posted, if any. Never throws.
  std::optional<std::string> posted_failure() const;
  // The error for operation `op` issued after `broken` broke the group.
  static std::exception_ptr failed_earlier(const std::string& op, std::exception_ptr broken);
  // Throws the DistributedError for an operation abandoned because of another rank's `failure`.
  [[noreturn]] void throw_abandoned(const std::string& op, uint64_t seq,
                                    const std::string& failure) const;

 private:
  void report_loop();

  std::shared_ptr<Store> store_;
  int rank_, size_;
  std::atomic<uint64_t> entered_seq_{0};  // 1 + seq of the last collective entered, 0: none
  std::atomic<const char*> entered_op_{""};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread reporter_;
};

}  // namespace cohort::collectives
