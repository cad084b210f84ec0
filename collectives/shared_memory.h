// POSIX shared memory between the processes of one node, shared by the cpu backend's rings and the
// parameter server's co-located data path: named segments (0600, so only this user's processes
// can open them) mapped with RAII, and the identity that decides whether two processes share a
// node.
#pragma once

#include <cstddef>
#include <string>
#include <utility>

namespace cohort::collectives {

// A mapping of a segment; unmapped when destroyed. Movable, so containers can hold it.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  Mapping(Mapping&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  void* addr() const { return addr_; }
  size_t size() const { return size_; }
  explicit operator bool() const { return addr_ != nullptr; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// Creates (O_EXCL) or opens the segment `name` ("/..."), of `size` bytes, and maps it populated.
// Throws DistributedError naming the segment (and /dev/shm when it may be full); opening checks
// that the segment has at least `size` bytes.
Mapping map_segment(const std::string& name, size_t size, bool create);
// Removes the name (the memory lives on while mapped); a missing name is not an error.
void unlink_segment(const std::string& name);

// "/cohort-<pid>_<start>-<what>": every segment Cohort creates names its creator by pid and start
// time (clock ticks after boot), so that any process on the node can tell one whose creator is
// gone, even after the pid was reused. `what` says whose it is (a group's token, "ps-values-...").
std::string owned_segment_name(const std::string& what);

// Unlinks this node's segments (this user's: /dev/shm is sticky) named by owned_segment_name whose
// creator has exited: what a SIGKILL between create and unlink left behind. The launcher runs it
// whenever a worker exits, and every group and parameter server as it starts. Returns how many.
int remove_orphaned_segments();

// True once process `pid` (of this node's pid namespace) has exited, reaped or not: what the
// shared-memory paths check while they wait on a peer that would never say it is gone.
bool process_exited(int pid);

// "host/boot id/network namespace/pid namespace": processes with the same value can share memory
// and see each other's pids (which the shared-memory paths watch to notice a peer's exit).
// Separate network namespaces count as separate nodes, so namespace-based multi-node tests (and
// containers) use the network as real nodes do. Sets `host` to the hostname.
std::string node_identity(std::string& host);
std::string node_identity();

}  // namespace cohort::collectives
