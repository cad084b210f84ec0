// Internal to the cpu backend: the header every message carries, and one queued operation with
// the streaming engine that runs it (cpu_process_group.cc), shared with the collectives' algorithms
// (cpu_collectives.cc).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/cpu/cpu_process_group.h"

namespace cohort::collectives::cpu {

// Every message on a channel starts with this header, so ranks that call different collectives,
// or the same one with different sizes, get an error instead of silently mixed data.
struct Header {
  uint32_t magic = 0xC0407C01;
  uint32_t op = 0;
  uint32_t tag = 0;
  uint32_t algorithm = 0;  // an all-reduce's (CpuProcessGroup::Algorithm); 0 otherwise
  uint64_t seq = 0;
  uint64_t bytes = 0;
};

enum OpCode : uint32_t {
  kAllreduce = 1,
  kBroadcast,
  kReduce,
  kAllgather,
  kReduceScatter,
  kAlltoall,
  kBarrier,
  kSendRecv
};

// One queued operation and the streaming engine that runs it.
struct CpuProcessGroup::Op {
  std::string name;
  const char* static_name = "";
  uint32_t code = 0;
  bool collective = true;
  uint64_t seq = 0;
  Millis timeout{0};
  std::chrono::steady_clock::time_point deadline;
  std::function<void(Op&)> body;
  std::shared_ptr<Work> work;
  CpuProcessGroup* pg = nullptr;
  uint64_t flight = 0;  // its flight-recorder entry
  // What this op's data is, for reductions.
  core::DType dtype = core::DType::kFloat32;
  ReduceOp reduce = ReduceOp::kSum;
  size_t elem = 4;
  Algorithm algorithm = Algorithm::kAuto;  // an all-reduce's, sent in every header

  // A step sends `send_bytes` from send_ptr to send_peer and receives recv_bytes from recv_peer
  // into recv_ptr (copying or reducing). A step's send may only use bytes that step `dep`'s receive
  // has finished (the ring forwards what it just reduced; a chain forwards what it just got).
  struct Step {
    int send_peer = -1, recv_peer = -1;
    const uint8_t* send_ptr = nullptr;
    uint8_t* recv_ptr = nullptr;
    size_t send_bytes = 0, recv_bytes = 0;
    bool reduce = false;
    int divide_by = 0;  // reduce, then divide each element by this (an average's last step)
    int dep = -1;
    // The send waits for the dep's whole receive instead of following it byte by byte (it sends
    // from elsewhere in the buffer: a pipeline's next phase).
    bool dep_whole = false;
    uint32_t tag = 0;
    uint64_t send_seq = 0, recv_seq = 0;  // header sequence numbers (collective seq or p2p count)
  };

  void run(std::vector<Step>& steps);
  [[noreturn]] void timed_out(const std::vector<int>& waiting_on);
};

}  // namespace cohort::collectives::cpu
