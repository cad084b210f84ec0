#include "collectives/op_runner.h"

#include <chrono>

#include "collectives/process_group.h"

namespace cohort::collectives {

OpRunner::OpRunner(size_t inline_bytes) : inline_bytes_(inline_bytes) {
  worker_ = std::thread([this] { loop(); });
}

OpRunner::~OpRunner() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void OpRunner::submit(size_t bytes, bool collective, std::function<void(uint64_t)> run) {
  uint64_t seq = 0;
  bool run_here = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (collective) seq = next_seq_++;
    if (bytes <= inline_bytes_.load(std::memory_order_relaxed) && queue_.empty() && !busy_) {
      busy_ = true;
      run_here = true;
    } else {
      queue_.push_back({seq, std::move(run)});
    }
  }
  bool wake = !run_here;
  if (run_here) {
    // The caller's time in the operation, as a wait for it would have counted it.
    const auto t0 = std::chrono::steady_clock::now();
    run(seq);
    add_thread_collective_ns(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
            .count());
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
    wake = !queue_.empty();  // something queued meanwhile waits for busy_ to clear
  }
  // Waking the progress thread costs a system call and a context switch; only when it has work.
  if (wake) cv_.notify_all();
}

void OpRunner::loop() {
  while (true) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !busy_ && (stopping_ || !queue_.empty()); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    task.run(task.seq);
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
  }
}

}  // namespace cohort::collectives
