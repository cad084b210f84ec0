// Cohort's own CPU backend. One progress thread per group executes the queued operations in order
// (so Work is truly asynchronous), driving non-blocking channels: a pipelined ring for large
// all-reduces, recursive doubling for small ones, chains for broadcast and reduce.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <thread>

#include "collectives/cpu/transport.h"
#include "collectives/process_group.h"

namespace cohort::collectives::cpu {

class CpuProcessGroup final : public ProcessGroup {
 public:
  CpuProcessGroup(std::shared_ptr<Store> store, int rank, int size, ProcessGroupOptions options);
  ~CpuProcessGroup() override;
  std::string backend_name() const override { return "cpu"; }

  std::shared_ptr<Work> allreduce(core::Tensor& tensor, const AllreduceOptions& o = {}) override;
  std::shared_ptr<Work> broadcast(core::Tensor& tensor, const BroadcastOptions& o = {}) override;
  std::shared_ptr<Work> reduce(core::Tensor& tensor, const ReduceOptions& o = {}) override;
  std::shared_ptr<Work> allgather(core::Tensor& output, const core::Tensor& input,
                                  const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> reduce_scatter(core::Tensor& output, const core::Tensor& input,
                                       const ReduceScatterOptions& o = {}) override;
  std::shared_ptr<Work> alltoall(core::Tensor& output, const core::Tensor& input,
                                 const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> barrier(const CollectiveOptions& o = {}) override;
  std::shared_ptr<Work> send(const core::Tensor& tensor, int dst, int tag = 0) override;
  std::shared_ptr<Work> recv(core::Tensor& tensor, int src, int tag = 0) override;

  // Messages at or below this many bytes use recursive doubling; above, the ring.
  static constexpr size_t kSmallAllreduceBytes = 64 << 10;
  // Operations up to this size run on the caller's thread when the queue is empty.
  static constexpr size_t kInlineBytes = 64 << 10;

  struct Op;  // one queued operation (defined in the .cc)

 private:
  std::shared_ptr<Work> enqueue(const char* name, Millis timeout, bool collective, size_t bytes,
                                std::function<void(Op&)> body);
  void execute(Op& op);
  void worker_loop();
  void reporter_loop();

  std::shared_ptr<Store> store_;
  ProcessGroupOptions options_;
  std::unique_ptr<Mesh> mesh_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Op>> queue_;
  bool stopping_ = false;
  bool busy_ = false;      // an operation is executing (on the progress thread or inline)
  uint64_t next_seq_ = 0;  // collectives issued (guarded by mu_)
  std::vector<uint64_t> p2p_sent_, p2p_received_;  // per peer; touched only while busy_
  std::atomic<uint64_t> entered_seq_{0};  // 1 + seq of the last collective entered, 0: none
  std::atomic<const char*> entered_op_{""};
  std::exception_ptr broken_;  // the error that broke the group; touched only while busy_
  std::thread worker_, reporter_;
  std::mutex reporter_mu_;
  std::condition_variable reporter_cv_;
};

}  // namespace cohort::collectives::cpu
