// Cohort's own CPU backend. An OpRunner executes the group's operations in issue order (so Work is
// truly asynchronous), driving non-blocking channels: a pipelined ring for large
// all-reduces, recursive doubling for small ones, chains for broadcast and reduce. With several
// ranks on each of several nodes, all-reduces go hierarchically: a chain reduces inside each node
// over shared memory, one leader per node all-reduces over TCP, a chain broadcasts the result back.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "collectives/cpu/transport.h"
#include "collectives/group_monitor.h"
#include "collectives/op_runner.h"
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
  std::string allreduce_algorithm(size_t bytes) const override;
  std::string topology() const override;

  enum class Algorithm : uint32_t { kAuto = 0, kRing, kRecursiveDoubling, kHierarchical };
  static Algorithm parse_algorithm(const std::string& name);  // ConfigError naming the choices
  static const char* algorithm_name(Algorithm a);
  // The algorithm an all-reduce of `bytes` (`numel` elements) uses in this group.
  Algorithm choose(size_t bytes, int64_t numel) const;

  // All-reduces at or below this many bytes use recursive doubling, above it the ring (measured:
  // docs/collectives.md): over shared memory only, and where a step crosses TCP.
  static constexpr size_t kSmallAllreduceBytesShm = 64 << 10;
  static constexpr size_t kSmallAllreduceBytesTcp = 64 << 10;
  // Below this, even with several ranks per node, a flat recursive doubling beats the hierarchy:
  // its extra hops inside the nodes cost more than the bytes it saves between them (measured).
  static constexpr size_t kHierarchicalMinBytes = 32 << 10;
  // Operations up to this size run on the caller's thread when the queue is empty; all of them do
  // when every peer is on shared memory and this node's ranks keep all its cores computing.
  static constexpr size_t kInlineBytes = 64 << 10;

  struct Op;  // one queued operation (defined in the .cc)

 private:
  // `of`: a tensor of the operation (its dtype is recorded); null for a barrier. `peer`: send
  // and recv's other rank.
  std::shared_ptr<Work> enqueue(const char* name, Millis timeout, bool collective, size_t bytes,
                                std::function<void(Op&)> body, const core::Tensor* of = nullptr,
                                int peer = -1);
  // Runs on the runner's thread or inline, one operation at a time.
  void execute(Op& op);
  // The size up to which an operation issued now runs on the caller's thread.
  size_t inline_bytes() const;

  std::shared_ptr<Store> store_;
  ProcessGroupOptions options_;
  std::unique_ptr<Mesh> mesh_;
  bool all_shm_ = false;  // every peer shares this node's memory
  // The group's nodes (ranks that share memory), each in rank order, ordered by lowest rank; the
  // first rank of each is its leader.
  std::vector<std::vector<int>> nodes_;
  int node_ = 0;  // this rank's node
  Algorithm forced_ = Algorithm::kAuto;
  int cores_ = 1;  // cores this process may run on, read when the group was made
  // Touched only by the operation running (the runner runs one at a time).
  std::vector<uint64_t> p2p_sent_, p2p_received_;  // per peer
  std::exception_ptr broken_;                      // the error that broke the group
  std::unique_ptr<GroupMonitor> monitor_;
  int flight_group_ = 0;              // this group's number in the flight recorder
  std::unique_ptr<OpRunner> runner_;  // last: stopped first
};

}  // namespace cohort::collectives::cpu
