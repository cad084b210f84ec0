#include "trainer/checkpoint_writer.h"

#include "core/autograd/grad_mode.h"

namespace cohort::trainer {

using Clock = std::chrono::steady_clock;

core::Tensor host_snapshot(const core::Tensor& t) {
  if (!t.defined()) return t;
  core::autograd::NoGradGuard guard;
  const core::Tensor d = t.detach();
  // to() copies from a device; on the CPU a clone is needed, as the live tensor keeps training.
  return d.device().is_cpu() ? d.clone() : d.to(core::Device::cpu());
}

core::io::ShardedState host_snapshot(const core::io::ShardedState& s) {
  core::io::ShardedState out = s;
  for (auto* part : {&out.model, &out.optimizer})
    for (core::io::Piece& p : *part) p.data = host_snapshot(p.data);
  return out;
}

std::map<std::string, core::Tensor> host_snapshot(const std::map<std::string, core::Tensor>& m) {
  std::map<std::string, core::Tensor> out;
  for (const auto& [name, t] : m) out[name] = host_snapshot(t);
  return out;
}

CheckpointWriter::~CheckpointWriter() {
  cancelled_.store(true);
  if (thread_.joinable()) thread_.join();
}

std::optional<CheckpointWriter::Written> CheckpointWriter::join() {
  if (!thread_.joinable()) return std::nullopt;
  thread_.join();
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  return Written{step_, seconds_};
}

std::optional<CheckpointWriter::Written> CheckpointWriter::start(int64_t step, Write write) {
  std::optional<Written> previous = join();
  step_ = step;
  started_ = Clock::now();
  done_.store(false, std::memory_order_relaxed);
  thread_ = std::thread([this, write = std::move(write)] {
    try {
      write(cancelled_);
    } catch (...) {
      error_ = std::current_exception();
    }
    seconds_ = std::chrono::duration<double>(Clock::now() - started_).count();
    done_.store(true, std::memory_order_release);
  });
  return previous;
}

std::optional<CheckpointWriter::Written> CheckpointWriter::wait() { return join(); }

std::optional<CheckpointWriter::Written> CheckpointWriter::poll() {
  if (!thread_.joinable() || !done_.load(std::memory_order_acquire)) return std::nullopt;
  return join();
}

}  // namespace cohort::trainer
