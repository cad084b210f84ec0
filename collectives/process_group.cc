#include "collectives/process_group.h"

#include <sstream>

#include "collectives/cpu/cpu_process_group.h"
#include "collectives/mpi/mpi_process_group.h"
#include "collectives/nccl/nccl_process_group.h"
#include "core/util/error.h"

namespace cohort::collectives {

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kProduct:
      return "product";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

bool Work::is_completed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

namespace {
thread_local int64_t t_waited_ns = 0;
}

int64_t thread_collective_ns() { return t_waited_ns; }
void add_thread_collective_ns(int64_t ns) { t_waited_ns += ns; }

void Work::wait(Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [&] { return done_; };
  if (!done_) {
    // Only a wait that blocks is timed: a finished operation costs no clock reads.
    const auto t0 = std::chrono::steady_clock::now();
    struct Account {
      std::chrono::steady_clock::time_point t0;
      ~Account() {
        t_waited_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - t0)
                           .count();
      }
    } account{t0};
    if (timeout == Millis::max()) {
      cv_.wait(lock, ready);
    } else if (!cv_.wait_for(lock, timeout, ready)) {
      COHORT_THROW(TimeoutError, "Work::wait gave up after ", timeout.count(),
                   " ms; the operation is still running and will end at its own timeout");
    }
  }
  if (error_) std::rethrow_exception(error_);
}

std::exception_ptr Work::exception() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

std::chrono::steady_clock::time_point Work::completed_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return completed_at_;
}

void Work::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    completed_at_ = std::chrono::steady_clock::now();
    done_ = true;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

std::shared_ptr<ProcessGroup> create_process_group(const std::string& backend,
                                                   std::shared_ptr<Store> store, int rank, int size,
                                                   const ProcessGroupOptions& options) {
  if (size < 1 || rank < 0 || rank >= size)
    COHORT_THROW(InvalidArgument, "rank ", rank, " is outside a group of size ", size);
  if (backend == "cpu")
    return std::make_shared<cpu::CpuProcessGroup>(std::move(store), rank, size, options);
  if (backend == "mpi") return mpi::create(std::move(store), rank, size, options);
  if (backend == "nccl") return nccl::create(std::move(store), rank, size, options);
  COHORT_THROW(ConfigError, "unknown process-group backend '", backend,
               "'; expected cpu, mpi or nccl");
}

void throw_unused_parameters(const char* who, int rank, const std::vector<std::string>& names,
                             const std::vector<size_t>& unused) {
  std::ostringstream list;
  for (size_t k = 0; k < unused.size() && k < 10; ++k) list << (k ? ", " : "") << names[unused[k]];
  if (unused.size() > 10) list << " and " << unused.size() - 10 << " more";
  COHORT_THROW(UnusedParametersError, who, ": ", unused.size(),
               " parameter(s) got no gradient in this backward pass on rank ", rank, ": ",
               list.str(),
               "; make every parameter contribute to the loss or allow unused parameters");
}

}  // namespace cohort::collectives
