// The cpu backend's collectives: each one's algorithm as steps for the engine (cpu_op.h): rings,
// recursive doubling for small all-reduces, chains and trees. Buffers are byte ranges of contiguous
// tensors; chunk boundaries fall on elements.
#include <algorithm>
#include <cstring>

#include "collectives/checks.h"
#include "collectives/cpu/cpu_op.h"
#include "collectives/cpu/cpu_process_group.h"
#include "collectives/cpu/reduce_kernels.h"
#include "core/util/env.h"
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

// The ranks an algorithm runs over, in its order, and this rank's place among them: the whole
// group, a node's ranks, or the nodes' leaders.
struct Members {
  std::vector<int> ranks;
  int me = 0;
  int size() const { return static_cast<int>(ranks.size()); }
  int at(int i) const { return ranks[static_cast<size_t>(mod(i, size()))]; }
};

Members whole_group(int rank, int size) {
  Members m;
  m.ranks.resize(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) m.ranks[static_cast<size_t>(r)] = r;
  m.me = rank;
  return m;
}

// Appends the steps of a ring reduce-scatter (and, with `gather`, the all-gather after it) over
// buf among `m` to `steps`: afterwards chunk i of buf holds the reduction on member i (and with
// gather, every chunk does). divide_by: the last reduce step divides this rank's chunk as it
// completes (an average), so the gather already carries it (while in cache) instead of a pass
// over the whole buffer. first_dep: a step whose whole receive the first send waits for (-1: none).
void ring_steps(CpuProcessGroup::Op& op, const Members& m, uint8_t* buf, const Chunks& c,
                bool scatter, bool gather, int divide_by, std::vector<Step>& steps,
                int first_dep = -1) {
  const int size = m.size(), me = m.me;
  const int next = m.at(me + 1), prev = m.at(me - 1);
  const int base = static_cast<int>(steps.size());
  auto link = [&](Step& st) {
    if (static_cast<int>(steps.size()) > base) {
      st.dep = static_cast<int>(steps.size()) - 1;
    } else {
      st.dep = first_dep;
      st.dep_whole = first_dep >= 0;
    }
  };
  if (scatter)
    for (int s = 0; s < size - 1; ++s) {
      Step st;
      const int sc = mod(me - s - 1, size), rc = mod(me - s - 2, size);
      st.send_peer = next;
      st.send_ptr = buf + c.off[sc];
      st.send_bytes = c.len[sc];
      st.recv_peer = prev;
      st.recv_ptr = buf + c.off[rc];
      st.recv_bytes = c.len[rc];
      st.reduce = true;
      if (s == size - 2) st.divide_by = divide_by;
      link(st);
      st.send_seq = st.recv_seq = op.seq;
      steps.push_back(st);
    }
  if (gather)
    for (int s = 0; s < size - 1; ++s) {
      Step st;
      const int sc = mod(me - s, size), rc = mod(me - s - 1, size);
      st.send_peer = next;
      st.send_ptr = buf + c.off[sc];
      st.send_bytes = c.len[sc];
      st.recv_peer = prev;
      st.recv_ptr = buf + c.off[rc];
      st.recv_bytes = c.len[rc];
      st.reduce = false;
      link(st);
      st.send_seq = st.recv_seq = op.seq;
      steps.push_back(st);
    }
}

void ring(CpuProcessGroup::Op& op, const Members& m, uint8_t* buf, const Chunks& c, bool scatter,
          bool gather, int divide_by = 0) {
  std::vector<Step> steps;
  ring_steps(op, m, buf, c, scatter, gather, divide_by, steps);
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

// Recursive doubling among `m`; members beyond the largest power of two fold into a partner
// first.
void recursive_doubling(CpuProcessGroup::Op& op, const Members& m, uint8_t* buf, size_t bytes) {
  std::vector<uint8_t> tmp(bytes);
  const int size = m.size(), me = m.me;
  int pof2 = 1;
  while (pof2 * 2 <= size) pof2 *= 2;
  const int extra = size - pof2;
  if (me >= pof2) {
    exchange_reduce(op, m.at(me - pof2), buf, tmp.data(), bytes, true, false);
  } else if (me < extra) {
    exchange_reduce(op, m.at(me + pof2), buf, tmp.data(), bytes, false, true);
  }
  if (me < pof2)
    for (int mask = 1; mask < pof2; mask <<= 1)
      exchange_reduce(op, m.at(me ^ mask), buf, tmp.data(), bytes, true, true);
  // Hand the result back to the folded members.
  std::vector<Step> steps(1);
  Step& st = steps[0];
  st.send_seq = st.recv_seq = op.seq;
  if (me >= pof2) {
    st.recv_peer = m.at(me - pof2);
    st.recv_ptr = buf;
    st.recv_bytes = bytes;
    op.run(steps);
  } else if (me < extra) {
    st.send_peer = m.at(me + pof2);
    st.send_ptr = buf;
    st.send_bytes = bytes;
    op.run(steps);
  }
}

// A pipelined chain towards member `root`: each member adds what it receives from the one after
// it and forwards the partial sums as they become ready. Only the root's buf ends with the total.
void chain_reduce(CpuProcessGroup::Op& op, const Members& m, int root, uint8_t* buf, size_t bytes) {
  const int size = m.size(), v = mod(m.me - root, size);
  if (size == 1) return;
  std::vector<Step> steps(1);
  Step& st = steps[0];
  st.send_seq = st.recv_seq = op.seq;
  if (v < size - 1) {
    st.recv_peer = m.at(m.me + 1);
    st.recv_ptr = buf;
    st.recv_bytes = bytes;
    st.reduce = true;
    st.dep = 0;
  }
  if (v > 0) {
    st.send_peer = m.at(m.me - 1);
    st.send_ptr = buf;
    st.send_bytes = bytes;
  }
  op.run(steps);
}

// A pipelined chain from member `root`: each member forwards what it has received so far.
void chain_broadcast(CpuProcessGroup::Op& op, const Members& m, int root, uint8_t* buf,
                     size_t bytes) {
  const int size = m.size(), v = mod(m.me - root, size);
  if (size == 1) return;
  std::vector<Step> steps(1);
  Step& st = steps[0];
  st.send_seq = st.recv_seq = op.seq;
  if (v > 0) {
    st.recv_peer = m.at(m.me - 1);
    st.recv_ptr = buf;
    st.recv_bytes = bytes;
    st.dep = 0;
  }
  if (v < size - 1) {
    st.send_peer = m.at(m.me + 1);
    st.send_ptr = buf;
    st.send_bytes = bytes;
  }
  op.run(steps);
}

// The hierarchical all-reduce of a large message, pipelined by segments: while the leaders ring
// one segment over the network, the node's chain reduces the next into the leader and the
// previous one's result flows back down the chain, so the link never waits for the node.
// `local`: this node's ranks, the leader first; `leaders`: one per node (only the leader uses
// them). divide_by: the group's size for an average, else 0.
void hierarchical_pipelined(CpuProcessGroup::Op& op, const Members& local, const Members& leaders,
                            uint8_t* buf, size_t numel, int divide_by) {
  const size_t elem = op.elem;
  // Segments big enough that a step's fixed cost is small, small enough that filling and
  // draining the pipeline (the first segment's reduce, the last one's broadcast) is.
  const size_t seg_elems = std::max<size_t>(
      {(256u << 10) / elem, (numel + 31) / 32, static_cast<size_t>(leaders.size())});
  const int L = local.size(), v = local.me;
  std::vector<Step> steps;
  for (size_t off = 0; off < numel; off += seg_elems) {
    const size_t count = std::min(seg_elems, numel - off);
    uint8_t* seg = buf + off * elem;
    const size_t bytes = count * elem;
    if (v == 0) {
      int reduced = -1;  // the step that brings the node's sum of this segment
      if (L > 1) {
        Step st;
        st.recv_peer = local.at(1);
        st.recv_ptr = seg;
        st.recv_bytes = bytes;
        st.reduce = true;
        // A single node: this is the last reduction.
        if (leaders.size() == 1) st.divide_by = divide_by;
        st.send_seq = st.recv_seq = op.seq;
        reduced = static_cast<int>(steps.size());
        steps.push_back(st);
      }
      if (leaders.size() > 1) {
        ring_steps(op, leaders, seg, Chunks(count, elem, leaders.size()), true, true, divide_by,
                   steps, reduced);
        reduced = static_cast<int>(steps.size()) - 1;
      }
      if (L > 1) {
        Step st;
        st.send_peer = local.at(1);
        st.send_ptr = seg;
        st.send_bytes = bytes;
        st.dep = reduced;
        st.dep_whole = true;
        st.send_seq = st.recv_seq = op.seq;
        steps.push_back(st);
      }
    } else {
      // Up the chain: add what the rank after this one sends and forward the partial sums.
      Step up;
      up.send_seq = up.recv_seq = op.seq;
      if (v < L - 1) {
        up.recv_peer = local.at(v + 1);
        up.recv_ptr = seg;
        up.recv_bytes = bytes;
        up.reduce = true;
        up.dep = static_cast<int>(steps.size());
      }
      up.send_peer = local.at(v - 1);
      up.send_ptr = seg;
      up.send_bytes = bytes;
      steps.push_back(up);
      // Down the chain: the result, forwarded as it arrives.
      Step down;
      down.send_seq = down.recv_seq = op.seq;
      down.recv_peer = local.at(v - 1);
      down.recv_ptr = seg;
      down.recv_bytes = bytes;
      if (v < L - 1) {
        down.send_peer = local.at(v + 1);
        down.send_ptr = seg;
        down.send_bytes = bytes;
        down.dep = static_cast<int>(steps.size());
      }
      steps.push_back(down);
    }
  }
  op.run(steps);
}

}  // namespace

CpuProcessGroup::Algorithm CpuProcessGroup::parse_algorithm(const std::string& name) {
  if (name == "auto") return Algorithm::kAuto;
  if (name == "ring") return Algorithm::kRing;
  if (name == "recursive_doubling") return Algorithm::kRecursiveDoubling;
  if (name == "hierarchical") return Algorithm::kHierarchical;
  COHORT_THROW(ConfigError, "all-reduce algorithm '", name,
               "' is not one of auto, ring, recursive_doubling, hierarchical");
}

const char* CpuProcessGroup::algorithm_name(Algorithm a) {
  switch (a) {
    case Algorithm::kAuto:
      return "auto";
    case Algorithm::kRing:
      return "ring";
    case Algorithm::kRecursiveDoubling:
      return "recursive doubling";
    case Algorithm::kHierarchical:
      return "hierarchical";
  }
  return "?";
}

CpuProcessGroup::Algorithm CpuProcessGroup::choose(size_t bytes, int64_t numel) const {
  // Recursive doubling sends whole messages: it needs no element per rank.
  const bool tiny = static_cast<size_t>(numel) < static_cast<size_t>(size_);
  if (forced_ != Algorithm::kAuto)
    return tiny && forced_ == Algorithm::kRing ? Algorithm::kRecursiveDoubling : forced_;
  // Several nodes with several ranks on one of them: only the leaders cross the network, so a
  // node's link carries 2(N-1)/N of the message (N nodes) instead of a flat ring's 2(n-1)/n at
  // each of its edges (docs/collectives.md); shared memory inside the node is far faster.
  if (nodes_.size() > 1 && !all_shm_ && options_.transport != "tcp" &&
      bytes >= kHierarchicalMinBytes) {
    for (const auto& n : nodes_)
      if (n.size() > 1) return Algorithm::kHierarchical;
  }
  const size_t small = all_shm_ ? kSmallAllreduceBytesShm : kSmallAllreduceBytesTcp;
  return bytes <= small || tiny ? Algorithm::kRecursiveDoubling : Algorithm::kRing;
}

std::string CpuProcessGroup::allreduce_algorithm(size_t bytes) const {
  const Algorithm a = choose(bytes, static_cast<int64_t>(bytes / 4));
  if (a != Algorithm::kHierarchical) return algorithm_name(a);
  const int leaders = static_cast<int>(nodes_.size());
  const bool rd = bytes <= kSmallAllreduceBytesTcp ||
                  static_cast<size_t>(bytes / 4) < static_cast<size_t>(leaders);
  return std::string("hierarchical (") + (rd ? "recursive doubling" : "ring") + " among " +
         std::to_string(leaders) + " leaders)";
}

std::string CpuProcessGroup::topology() const {
  size_t most = 0, fewest = SIZE_MAX;
  for (const auto& n : nodes_) {
    most = std::max(most, n.size());
    fewest = std::min(fewest, n.size());
  }
  std::string layout = std::to_string(nodes_.size()) + (nodes_.size() == 1 ? " node" : " nodes");
  layout += most == fewest
                ? " x " + std::to_string(most) + (most == 1 ? " rank" : " ranks")
                : ", " + std::to_string(fewest) + " to " + std::to_string(most) + " ranks each";
  std::string how;
  if (forced_ != Algorithm::kAuto) {
    how = std::string(algorithm_name(forced_)) + " all-reduce, as asked";
  } else if (choose(SIZE_MAX / 2, INT64_MAX / 2) == Algorithm::kHierarchical) {
    how = "hierarchical all-reduce from " + std::to_string(kHierarchicalMinBytes >> 10) +
          " KiB (shared memory inside a node, TCP between one leader per node)";
  } else {
    how = "flat all-reduce (recursive doubling up to " +
          std::to_string((all_shm_ ? kSmallAllreduceBytesShm : kSmallAllreduceBytesTcp) >> 10) +
          " KiB, then ring)";
  }
  return layout + ": " + how;
}

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
        const int64_t numel = tensor.numel();
        uint8_t* buf = static_cast<uint8_t*>(tensor.raw_data());
        const bool avg = o.op == ReduceOp::kAvg;
        if (size_ == 1 || bytes == 0) return;
        op.algorithm = choose(bytes, numel);
        bool averaged = false;
        // The ring over `m`, or recursive doubling where the message is small or has fewer
        // elements than members.
        auto flat = [&](const Members& m, Algorithm a) {
          if (a == Algorithm::kRing) {
            ring(op, m, buf, Chunks(static_cast<size_t>(numel), op.elem, m.size()), true, true,
                 avg ? size_ : 0);
            averaged = avg;
          } else {
            recursive_doubling(op, m, buf, bytes);
          }
        };
        if (op.algorithm != Algorithm::kHierarchical) {
          flat(whole_group(rank_, size_), op.algorithm);
        } else {
          Members local;
          local.ranks = nodes_[static_cast<size_t>(node_)];
          local.me = static_cast<int>(std::find(local.ranks.begin(), local.ranks.end(), rank_) -
                                      local.ranks.begin());
          Members leaders;
          for (const auto& n : nodes_) leaders.ranks.push_back(n.front());
          leaders.me = node_;
          const bool rd = bytes <= kSmallAllreduceBytesTcp ||
                          static_cast<size_t>(numel) < static_cast<size_t>(leaders.size());
          if (!rd) {
            hierarchical_pipelined(op, local, leaders, buf, static_cast<size_t>(numel),
                                   avg ? size_ : 0);
          } else {
            chain_reduce(op, local, 0, buf, bytes);
            if (local.me == 0) {
              if (leaders.size() > 1) flat(leaders, Algorithm::kRecursiveDoubling);
              // The leader averages before the broadcast: the others receive the result.
              if (avg) divide(op.dtype, buf, static_cast<size_t>(numel), size_);
            }
            chain_broadcast(op, local, 0, buf, bytes);
          }
          averaged = avg;
        }
        if (avg && !averaged) divide(op.dtype, buf, static_cast<size_t>(numel), size_);
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
        chain_broadcast(op, whole_group(rank_, size_), o.root,
                        static_cast<uint8_t*>(tensor.raw_data()), tensor.nbytes());
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
        chain_reduce(op, whole_group(rank_, size_), o.root, buf, tensor.nbytes());
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
        ring(op, whole_group(rank_, size_), buf, c, false, true);
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
          ring(op, whole_group(rank_, size_), buf, c, true, false, average ? size_ : 0);
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
    if (size_ > 1)
      recursive_doubling(op, whole_group(rank_, size_), reinterpret_cast<uint8_t*>(&token), 4);
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
