// checkpoint.async: the state is copied to host memory at the step boundary (the only part of a
// checkpoint that stalls training) and a background thread writes that copy exactly as a
// synchronous checkpoint is written: under a temporary name, fsynced, renamed into place, so a
// crash during the write leaves the previous checkpoint the newest valid one. One write at most is
// in flight: the next checkpoint (or the end of the run) first waits for it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "core/io/checkpoint.h"
#include "core/tensor/tensor.h"

namespace cohort::trainer {

// A copy of `t` in host memory that training cannot change: detached, contiguous, on the CPU.
core::Tensor host_snapshot(const core::Tensor& t);
// Every tensor of a state (each piece's data, each map's values), copied so.
core::io::ShardedState host_snapshot(const core::io::ShardedState& s);
std::map<std::string, core::Tensor> host_snapshot(const std::map<std::string, core::Tensor>& m);

class CheckpointWriter {
 public:
  struct Written {
    int64_t step = 0;
    double seconds = 0;  // the background write, from start() to its end
  };
  CheckpointWriter() = default;
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;
  // A write still in flight is told to stop waiting for other ranks (`cancelled`), and is waited
  // for; its error is dropped (the run is already ending with another, or wait() would have
  // reported it). What it has not renamed into place stays a temporary directory.
  ~CheckpointWriter();

  // Waits for the write in flight (rethrowing its error), then runs `write` on a new thread.
  // Returns the write it waited for, if any. `write` polls `cancelled` while it waits for others.
  using Write = std::function<void(const std::atomic<bool>& cancelled)>;
  std::optional<Written> start(int64_t step, Write write);
  // Waits for the write in flight, if any; rethrows its error.
  std::optional<Written> wait();
  // The write that finished since the last call, without waiting; rethrows its error.
  std::optional<Written> poll();
  bool busy() const { return thread_.joinable() && !done_.load(std::memory_order_acquire); }

 private:
  std::optional<Written> join();

  std::thread thread_;
  std::atomic<bool> done_{false}, cancelled_{false};
  std::exception_ptr error_;
  int64_t step_ = 0;
  std::chrono::steady_clock::time_point started_{};
  double seconds_ = 0;
};

}  // namespace cohort::trainer
