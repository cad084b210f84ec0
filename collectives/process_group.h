// ProcessGroup: the collectives every backend (cpu, mpi, nccl) provides, each returning a Work
// handle so callers can overlap computation with communication (DDP does). Tensors are reduced in
// place and must stay untouched until their Work completes.
//
// Every collective carries a per-group sequence number. A collective that does not finish within
// its timeout fails with an error that names the ranks that never entered it (learned through the
// Store) and what they last entered; a peer that dies becomes an error naming that peer.
#pragma once

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collectives/store/store.h"
#include "core/tensor/tensor.h"

namespace cohort::collectives {

enum class ReduceOp { kSum, kAvg, kProduct, kMin, kMax };
std::string_view reduce_op_name(ReduceOp op);

// A zero timeout means the group's default (ProcessGroupOptions::timeout).
struct AllreduceOptions {
  ReduceOp op = ReduceOp::kSum;
  Millis timeout{0};
};
struct ReduceOptions {
  ReduceOp op = ReduceOp::kSum;
  int root = 0;
  Millis timeout{0};
};
struct BroadcastOptions {
  int root = 0;
  Millis timeout{0};
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::kSum;
  Millis timeout{0};
};
struct CollectiveOptions {
  Millis timeout{0};
};

// DDP or FSDP: parameters that got no gradient in a backward pass, while unused parameters are
// not allowed.
class UnusedParametersError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};
// Throws UnusedParametersError: `who` (DDP, FSDP) on `rank` got no gradient for the parameters
// `unused` (indices into `names`); the sentence names the first ten.
[[noreturn]] void throw_unused_parameters(const char* who, int rank,
                                          const std::vector<std::string>& names,
                                          const std::vector<size_t>& unused);

// Nanoseconds the calling thread has spent in collectives since it started: blocked in
// Work::wait, or running a small operation inline (op_runner.h). In a data-parallel step that is
// its time waiting for the other ranks. Every backend's Work completes on the host (nccl's when
// its kernel has), so this covers them all.
int64_t thread_collective_ns();
// For backends: adds time the calling thread spent in a collective.
void add_thread_collective_ns(int64_t ns);

class Work {
 public:
  virtual ~Work() = default;
  bool is_completed() const;
  // Blocks until the operation completes and rethrows its error. If `timeout` passes first, throws
  // TimeoutError (the operation itself keeps its own deadline and will still end).
  void wait(Millis timeout = Millis::max());
  std::exception_ptr exception() const;
  // When finish() ran (the epoch if not yet): timelines draw the operation up to here.
  std::chrono::steady_clock::time_point completed_at() const;
  // For backends: marks the work done, with an error or without.
  void finish(std::exception_ptr error = nullptr);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  std::chrono::steady_clock::time_point completed_at_{};
};

class ProcessGroup {
 public:
  ProcessGroup(int rank, int size) : rank_(rank), size_(size) {}
  virtual ~ProcessGroup() = default;
  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual std::string backend_name() const = 0;

  virtual std::shared_ptr<Work> allreduce(core::Tensor& tensor, const AllreduceOptions& o = {}) = 0;
  virtual std::shared_ptr<Work> broadcast(core::Tensor& tensor, const BroadcastOptions& o = {}) = 0;
  // The result lands on o.root; other ranks' tensors hold partial results afterwards.
  virtual std::shared_ptr<Work> reduce(core::Tensor& tensor, const ReduceOptions& o = {}) = 0;
  // output holds size() blocks of input's numel, rank i's input in block i. In place when input is
  // output's block rank().
  virtual std::shared_ptr<Work> allgather(core::Tensor& output, const core::Tensor& input,
                                          const CollectiveOptions& o = {}) = 0;
  // input holds size() blocks of output's numel; rank i gets the reduction of everyone's block i.
  // In place when output is input's block rank() (NCCL's convention): the other blocks of input
  // are then left undefined, and the cpu and nccl backends reduce without copying the input.
  virtual std::shared_ptr<Work> reduce_scatter(core::Tensor& output, const core::Tensor& input,
                                               const ReduceScatterOptions& o = {}) = 0;
  // input and output hold size() equal blocks; block j of rank i's input becomes block i of rank
  // j's output.
  virtual std::shared_ptr<Work> alltoall(core::Tensor& output, const core::Tensor& input,
                                         const CollectiveOptions& o = {}) = 0;
  virtual std::shared_ptr<Work> barrier(const CollectiveOptions& o = {}) = 0;
  // Point to point: a send must meet a recv of the same tag and size, in the same order.
  virtual std::shared_ptr<Work> send(const core::Tensor& tensor, int dst, int tag = 0) = 0;
  virtual std::shared_ptr<Work> recv(core::Tensor& tensor, int src, int tag = 0) = 0;

  // How an all-reduce of `bytes` runs in this group ("ring", "recursive doubling",
  // "hierarchical ..."; backends that choose inside their library say so), for benchmarks.
  virtual std::string allreduce_algorithm(size_t /*bytes*/) const { return backend_name(); }
  // The group's layout over nodes and what it means for its collectives, for the banner; empty
  // when there is nothing to say.
  virtual std::string topology() const { return ""; }

 protected:
  int rank_, size_;
};

struct ProcessGroupOptions {
  Millis timeout{std::chrono::seconds(300)};
  // cpu backend: "auto" (shared memory within a node, TCP between nodes), "tcp" or "shm".
  std::string transport = "auto";
  // The address peers use to reach this rank over TCP; empty: the interface that reaches the
  // TcpStore, else this host's name.
  std::string address;
  // cpu backend: how all-reduces run: "auto" (by size and node layout), "ring",
  // "recursive_doubling" or "hierarchical"; empty: COHORT_ALLREDUCE_ALGORITHM, else auto.
  // Every rank must choose the same.
  std::string allreduce_algorithm;
};

// Creates the group `backend` ("cpu", "mpi" or "nccl") over `store` (every member must call this
// with the same store namespace; use a PrefixStore per group). Throws ConfigError for a backend
// this build lacks.
std::shared_ptr<ProcessGroup> create_process_group(const std::string& backend,
                                                   std::shared_ptr<Store> store, int rank, int size,
                                                   const ProcessGroupOptions& options = {});

}  // namespace cohort::collectives
