// The cpu backend's collectives: each one's algorithm as steps for the engine (cpu_op.h): rings,
// recursive doubling for small all-reduces, chains and trees. Buffers are byte ranges of contiguous
// tensors; chunk boundaries fall on elements.
#include <algorithm>
#include <cstring>

#include "collectives/checks.h"
#include "collectives/cpu/cpu_op.h"
#include "collectives/cpu/cpu_process_group.h"
#include "collectives/cpu/reduce_kernels.h"
#include "core/util/error.h"

namespace cohort::collectives::cpu {

using core::DType;
using core::Tensor;

namespace {

struct Chunks {
  std::vector<size_t> off, len;  // bytes
  Chunks(size_t count, size_t elem, int parts) : off(parts), len(parts) {
    const size_t base = count / parts, rem = count % parts;
    size_t at = 0;
    for (int i = 0; i < parts; ++i) {
      off[i] = at;
      len[i] = (base + (static_cast<size_t>(i) < rem)) * elem;
      at += len[i];
    }
  }
};

int mod(int a, int m) { return ((a % m) + m) % m; }

using Step = CpuProcessGroup::Op::Step;

// Ring reduce-scatter (and, with `gather`, the all-gather after it) over buf: afterwards chunk r
// of buf holds the reduction (and with gather, every chunk does).
// average: the last reduce step divides this rank's chunk by `size` as it completes, so an
// average's gather already carries it (while in cache) instead of a pass over the whole buffer.
void ring(CpuProcessGroup::Op& op, int rank, int size, uint8_t* buf, const Chunks& c, bool scatter,
          bool gather, bool average = false) {
  const int next = (rank + 1) % size, prev = mod(rank - 1, size);
  std::vector<Step> steps;
  if (scatter)
    for (int s = 0; s < size - 1; ++s) {
      Step st;
      const int sc = mod(rank - s - 1, size), rc = mod(rank - s - 2, size);
      st.send_peer = next;
      st.send_ptr = buf + c.off[sc];
      st.send_bytes = c.len[sc];
      st.recv_peer = prev;
      st.recv_ptr = buf + c.off[rc];
      st.recv_bytes = c.len[rc];
      st.reduce = true;
      if (average && s == size - 2) st.divide_by = size;
      st.dep = s == 0 ? -1 : s - 1;
      st.send_seq = st.recv_seq = op.seq;
      steps.push_back(st);
    }
  if (gather)
    for (int s = 0; s < size - 1; ++s) {
      Step st;
      const int sc = mod(rank - s, size), rc = mod(rank - s - 1, size);
      st.send_peer = next;
      st.send_ptr = buf + c.off[sc];
      st.send_bytes = c.len[sc];
      st.recv_peer = prev;
      st.recv_ptr = buf + c.off[rc];
      st.recv_bytes = c.len[rc];
      st.reduce = false;
      st.dep = steps.empty() ? -1 : static_cast<int>(steps.size()) - 1;
      st.send_seq = st.recv_seq = op.seq;
      steps.push_back(st);
    }
  op.run(steps);
}

// Exchanges buf with `peer` (sending it, receiving theirs into tmp) and reduces tmp into buf.
void exchange_reduce(CpuProcessGroup::Op& op, int peer, uint8_t* buf, uint8_t* tmp, size_t bytes,
                     bool send, bool recv) {
  std::vector<Step> steps(1);
  Step& st = steps[0];
  if (send) {
    st.send_peer = peer;
    st.send_ptr = buf;
    st.send_bytes = bytes;
  }
  if (recv) {
    st.recv_peer = peer;
    st.recv_ptr = tmp;
    st.recv_bytes = bytes;
  }
  st.send_seq = st.recv_seq = op.seq;
  op.run(steps);
  if (recv) reduce_into(op.dtype, op.reduce, buf, tmp, bytes / op.elem);
}

// Recursive doubling; ranks beyond the largest power of two fold into a partner first.
void recursive_doubling(CpuProcessGroup::Op& op, int rank, int size, uint8_t* buf, size_t bytes) {
  std::vector<uint8_t> tmp(bytes);
  int pof2 = 1;
  while (pof2 * 2 <= size) pof2 *= 2;
  const int extra = size - pof2;
  if (rank >= pof2) {
    exchange_reduce(op, rank - pof2, buf, tmp.data(), bytes, true, false);
  } else if (rank < extra) {
    exchange_reduce(op, rank + pof2, buf, tmp.data(), bytes, false, true);
  }
  if (rank < pof2)
    for (int mask = 1; mask < pof2; mask <<= 1)
      exchange_reduce(op, rank ^ mask, buf, tmp.data(), bytes, true, true);
  // Hand the result back to the folded ranks.
  std::vector<Step> steps(1);
  Step& st = steps[0];
  st.send_seq = st.recv_seq = op.seq;
  if (rank >= pof2) {
    st.recv_peer = rank - pof2;
    st.recv_ptr = buf;
    st.recv_bytes = bytes;
    op.run(steps);
  } else if (rank < extra) {
    st.send_peer = rank + pof2;
    st.send_ptr = buf;
    st.send_bytes = bytes;
    op.run(steps);
  }
}

}  // namespace

std::shared_ptr<Work> CpuProcessGroup::allreduce(Tensor& t, const AllreduceOptions& o) {
  check_tensor(t, "allreduce", "cpu");
  check_reducible(t.dtype(), o.op, "allreduce");
  Tensor tensor = t;
  return enqueue(
      "allreduce", o.timeout, true, t.nbytes(),
      [this, tensor, o](Op& op) {
        op.code = kAllreduce;
        op.dtype = tensor.dtype();
        op.reduce = o.op;
        op.elem = tensor.element_size();
        const size_t bytes = tensor.nbytes();
        uint8_t* buf = static_cast<uint8_t*>(tensor.raw_data());
        bool averaged = false;
        if (size_ > 1 && bytes > 0) {
          if (bytes <= kSmallAllreduceBytes ||
              static_cast<size_t>(tensor.numel()) < static_cast<size_t>(size_)) {
            recursive_doubling(op, rank_, size_, buf, bytes);
          } else {
            averaged = o.op == ReduceOp::kAvg;
            ring(op, rank_, size_, buf, Chunks(static_cast<size_t>(tensor.numel()), op.elem, size_),
                 true, true, averaged);
          }
        }
        if (o.op == ReduceOp::kAvg && bytes > 0 && !averaged)
          divide(op.dtype, buf, tensor.numel(), size_);
      },
      &t);
}

std::shared_ptr<Work> CpuProcessGroup::broadcast(Tensor& t, const BroadcastOptions& o) {
  check_tensor(t, "broadcast", "cpu");
  check_root(o.root, size_, "broadcast");
  Tensor tensor = t;
  return enqueue(
      "broadcast", o.timeout, true, t.nbytes(),
      [this, tensor, o](Op& op) {
        op.code = kBroadcast;
        if (size_ == 1) return;
        // A pipelined chain from the root: each rank forwards what it has received so far.
        const int v = mod(rank_ - o.root, size_);
        std::vector<Step> steps(1);
        Step& st = steps[0];
        uint8_t* buf = static_cast<uint8_t*>(tensor.raw_data());
        st.send_seq = st.recv_seq = op.seq;
        if (v > 0) {
          st.recv_peer = mod(rank_ - 1, size_);
          st.recv_ptr = buf;
          st.recv_bytes = tensor.nbytes();
          st.dep = 0;
        }
        if (v < size_ - 1) {
          st.send_peer = (rank_ + 1) % size_;
          st.send_ptr = buf;
          st.send_bytes = tensor.nbytes();
        }
        op.run(steps);
      },
      &t);
}

std::shared_ptr<Work> CpuProcessGroup::reduce(Tensor& t, const ReduceOptions& o) {
  check_tensor(t, "reduce", "cpu");
  check_reducible(t.dtype(), o.op, "reduce");
  check_root(o.root, size_, "reduce");
  Tensor tensor = t;
  return enqueue(
      "reduce", o.timeout, true, t.nbytes(),
      [this, tensor, o](Op& op) {
        op.code = kReduce;
        op.dtype = tensor.dtype();
        op.reduce = o.op;
        op.elem = tensor.element_size();
        uint8_t* buf = static_cast<uint8_t*>(tensor.raw_data());
        if (size_ > 1) {
          // A pipelined chain towards the root: each rank adds what it receives from the rank after
          // it and forwards the partial sums as they become ready.
          const int v = mod(rank_ - o.root, size_);
          std::vector<Step> steps(1);
          Step& st = steps[0];
          st.send_seq = st.recv_seq = op.seq;
          if (v < size_ - 1) {
            st.recv_peer = (rank_ + 1) % size_;
            st.recv_ptr = buf;
            st.recv_bytes = tensor.nbytes();
            st.reduce = true;
            st.dep = 0;
          }
          if (v > 0) {
            st.send_peer = mod(rank_ - 1, size_);
            st.send_ptr = buf;
            st.send_bytes = tensor.nbytes();
          }
          op.run(steps);
        }
        if (o.op == ReduceOp::kAvg && rank_ == o.root) divide(op.dtype, buf, tensor.numel(), size_);
      },
      &t);
}

std::shared_ptr<Work> CpuProcessGroup::allgather(Tensor& out, const Tensor& in,
                                                 const CollectiveOptions& o) {
  check_tensor(out, "allgather", "cpu");
  check_tensor(in, "allgather", "cpu");
  check_allgather(out, in, size_);
  Tensor output = out, input = in;
  return enqueue(
      "allgather", o.timeout, true, out.nbytes(),
      [this, output, input](Op& op) {
        op.code = kAllgather;
        const size_t block = input.nbytes();
        uint8_t* buf = static_cast<uint8_t*>(output.raw_data());
        if (buf + rank_ * block != input.raw_data())
          std::memmove(buf + rank_ * block, input.raw_data(), block);
        if (size_ == 1) return;
        Chunks c(static_cast<size_t>(input.numel()) * size_, input.element_size(), size_);
        ring(op, rank_, size_, buf, c, false, true);
      },
      &in);
}

std::shared_ptr<Work> CpuProcessGroup::reduce_scatter(Tensor& out, const Tensor& in,
                                                      const ReduceScatterOptions& o) {
  check_tensor(out, "reduce_scatter", "cpu");
  check_tensor(in, "reduce_scatter", "cpu");
  check_reducible(in.dtype(), o.op, "reduce_scatter");
  check_reduce_scatter(out, in, size_);
  Tensor output = out, input = in;
  return enqueue(
      "reduce_scatter", o.timeout, true, in.nbytes(),
      [this, output, input, o](Op& op) {
        op.code = kReduceScatter;
        op.dtype = input.dtype();
        op.reduce = o.op;
        op.elem = input.element_size();
        const size_t block = output.nbytes();
        auto* in_bytes = static_cast<uint8_t*>(input.raw_data());
        // In place (output is input's block `rank`, as NCCL defines it) the ring reduces in the
        // input itself: no copy of the whole input, and the average is taken as the last partial
        // sum lands.
        const bool in_place = in_bytes + rank_ * block == output.raw_data();
        std::unique_ptr<uint8_t[]> tmp;
        uint8_t* buf = in_bytes;
        if (!in_place) {
          tmp.reset(
              new uint8_t[input.nbytes()]);  // not value-initialised: every byte is copied over
          std::memcpy(tmp.get(), in_bytes, input.nbytes());
          buf = tmp.get();
        }
        const bool average = o.op == ReduceOp::kAvg && size_ > 1;
        if (size_ > 1) {
          Chunks c(static_cast<size_t>(input.numel()), op.elem, size_);
          ring(op, rank_, size_, buf, c, true, false, average);
        }
        if (!in_place) std::memcpy(output.raw_data(), buf + rank_ * block, block);
      },
      &in);
}

std::shared_ptr<Work> CpuProcessGroup::alltoall(Tensor& out, const Tensor& in,
                                                const CollectiveOptions& o) {
  check_tensor(out, "alltoall", "cpu");
  check_tensor(in, "alltoall", "cpu");
  check_alltoall(out, in, size_);
  Tensor output = out, input = in;
  return enqueue(
      "alltoall", o.timeout, true, in.nbytes(),
      [this, output, input](Op& op) {
        op.code = kAlltoall;
        const size_t block = input.nbytes() / size_;
        const uint8_t* src = static_cast<const uint8_t*>(input.raw_data());
        uint8_t* dst = static_cast<uint8_t*>(output.raw_data());
        // An empty tensor has no memory: memcpy of 0 bytes from null is still undefined.
        if (block > 0) std::memcpy(dst + rank_ * block, src + rank_ * block, block);
        std::vector<Step> steps;
        for (int s = 1; s < size_; ++s) {
          Step st;
          const int to = (rank_ + s) % size_, from = mod(rank_ - s, size_);
          st.send_peer = to;
          st.send_ptr = src + to * block;
          st.send_bytes = block;
          st.recv_peer = from;
          st.recv_ptr = dst + from * block;
          st.recv_bytes = block;
          st.send_seq = st.recv_seq = op.seq;
          steps.push_back(st);
        }
        op.run(steps);
      },
      &in);
}

std::shared_ptr<Work> CpuProcessGroup::barrier(const CollectiveOptions& o) {
  return enqueue("barrier", o.timeout, true, 0, [this](Op& op) {
    op.code = kBarrier;
    op.dtype = DType::kInt32;
    op.elem = 4;
    int32_t token = 0;
    if (size_ > 1) recursive_doubling(op, rank_, size_, reinterpret_cast<uint8_t*>(&token), 4);
  });
}

std::shared_ptr<Work> CpuProcessGroup::send(const Tensor& t, int dst, int tag) {
  check_tensor(t, "send", "cpu");
  check_peer(dst, rank_, size_, "send", "destination");
  Tensor tensor = t;
  return enqueue(
      "send", Millis(0), false, t.nbytes(),
      [this, tensor, dst, tag](Op& op) {
        op.code = kSendRecv;
        std::vector<Step> steps(1);
        steps[0].send_peer = dst;
        steps[0].send_ptr = static_cast<const uint8_t*>(tensor.raw_data());
        steps[0].send_bytes = tensor.nbytes();
        steps[0].tag = static_cast<uint32_t>(tag);
        steps[0].send_seq = p2p_sent_[dst]++;
        op.run(steps);
      },
      &t, dst);
}

std::shared_ptr<Work> CpuProcessGroup::recv(Tensor& t, int src, int tag) {
  check_tensor(t, "recv", "cpu");
  check_peer(src, rank_, size_, "recv", "source");
  Tensor tensor = t;
  return enqueue(
      "recv", Millis(0), false, t.nbytes(),
      [this, tensor, src, tag](Op& op) {
        op.code = kSendRecv;
        std::vector<Step> steps(1);
        steps[0].recv_peer = src;
        steps[0].recv_ptr = static_cast<uint8_t*>(tensor.raw_data());
        steps[0].recv_bytes = tensor.nbytes();
        steps[0].tag = static_cast<uint32_t>(tag);
        steps[0].recv_seq = p2p_received_[src]++;
        op.run(steps);
      },
      &t, src);
}

}  // namespace cohort::collectives::cpu
