// OpRunner: runs a process group's operations one at a time, in the order they were issued. Small
// operations run on the caller's thread when nothing is queued or running (handing them to another
// thread and back costs two wake-ups, several times a small transfer); the rest run on one
// progress thread, so that Work is truly asynchronous. Used by the cpu and mpi backends.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace cohort::collectives {

class OpRunner {
 public:
  explicit OpRunner(size_t inline_bytes);
  // Runs everything already submitted, then stops the progress thread.
  ~OpRunner();
  OpRunner(const OpRunner&) = delete;
  OpRunner& operator=(const OpRunner&) = delete;

  // Queues `run` (which must not throw). A collective gets the group's next sequence number,
  // assigned under the lock that orders the queue so that numbers follow issue order; other
  // operations get 0. Blocks only when the operation is small enough to run inline.
  void submit(size_t bytes, bool collective, std::function<void(uint64_t seq)> run);
  // Changes the inline threshold for later submissions (SIZE_MAX: everything runs inline when
  // idle).
  void set_inline_bytes(size_t bytes) { inline_bytes_.store(bytes, std::memory_order_relaxed); }

 private:
  struct Task {
    uint64_t seq;
    std::function<void(uint64_t)> run;
  };
  void loop();

  std::atomic<size_t> inline_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool stopping_ = false;
  bool busy_ = false;  // an operation is running, on the progress thread or inline
  uint64_t next_seq_ = 0;
  std::thread worker_;
};

}  // namespace cohort::collectives
