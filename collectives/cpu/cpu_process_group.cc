#include "collectives/cpu/cpu_process_group.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "collectives/checks.h"
#include "collectives/cpu/reduce_kernels.h"
#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "core/util/threads.h"

namespace cohort::collectives::cpu {

using core::DType;
using core::Tensor;
using Clock = std::chrono::steady_clock;

namespace {

// Every message on a channel starts with this header, so ranks that call different collectives,
// or the same one with different sizes, get an error instead of silently mixed data.
struct Header {
  uint32_t magic = 0xC0407C01;
  uint32_t op = 0;
  uint32_t tag = 0;
  uint32_t reserved = 0;
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

const char* op_name(uint32_t op) {
  static const char* names[] = {"?",        "allreduce", "broadcast",
                                "reduce",   "allgather", "reduce_scatter",
                                "alltoall", "barrier",   "send/recv"};
  return op < std::size(names) ? names[op] : "?";
}

std::string bytes_str(size_t n) {
  char buf[64];
  if (n >= (1u << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(n) / (1 << 20));
  } else if (n >= 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(n) / 1024);
  } else {
    std::snprintf(buf, sizeof buf, "%zu B", n);
  }
  return buf;
}

}  // namespace

// One queued operation and the streaming engine that runs it.
struct CpuProcessGroup::Op {
  std::string name;
  const char* static_name = "";
  uint32_t code = 0;
  bool collective = true;
  uint64_t seq = 0;
  Millis timeout{0};
  Clock::time_point deadline;
  std::function<void(Op&)> body;
  std::shared_ptr<Work> work;
  CpuProcessGroup* pg = nullptr;
  // What this op's data is, for reductions.
  DType dtype = DType::kFloat32;
  ReduceOp reduce = ReduceOp::kSum;
  size_t elem = 4;

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
    uint32_t tag = 0;
    uint64_t send_seq = 0, recv_seq = 0;  // header sequence numbers (collective seq or p2p count)
  };

  void run(std::vector<Step>& steps);
  [[noreturn]] void timed_out(const std::vector<int>& waiting_on);
};

namespace {

struct RecvState {
  Header header;
  size_t header_got = 0;
  size_t done = 0;  // payload bytes delivered (reduce: whole elements reduced)
  uint8_t carry[16];
  size_t carry_n = 0;
};

}  // namespace

void CpuProcessGroup::Op::run(std::vector<Step>& steps) {
  Mesh& mesh = *pg->mesh_;
  const size_t n = steps.size();
  std::vector<RecvState> rs(n);
  std::vector<size_t> sent(n, 0);  // bytes sent including the header
  std::vector<Header> sh(n);
  for (size_t i = 0; i < n; ++i) {
    sh[i].op = code;
    sh[i].tag = steps[i].tag;
    sh[i].seq = steps[i].send_seq;
    sh[i].bytes = steps[i].send_bytes;
  }
  std::vector<int> active;
  for (const auto& s : steps) {
    if (s.send_peer >= 0) active.push_back(s.send_peer);
    if (s.recv_peer >= 0) active.push_back(s.recv_peer);
  }
  std::sort(active.begin(), active.end());
  active.erase(std::unique(active.begin(), active.end()), active.end());

  size_t si = 0, ri = 0;
  Clock::time_point blocked_since{}, next_abort_check{};
  auto recv_complete = [&](size_t i) {
    return steps[i].recv_peer < 0 ||
           (rs[i].header_got == sizeof(Header) && rs[i].done == steps[i].recv_bytes);
  };
  while (si < n || ri < n) {
    bool progress = false;
    // Receive side: header first, then payload into place.
    while (ri < n && steps[ri].recv_peer < 0) ++ri;
    if (ri < n) {
      Step& st = steps[ri];
      RecvState& r = rs[ri];
      Channel& ch = mesh.recv_channel(st.recv_peer);
      if (r.header_got < sizeof(Header)) {
        size_t got = ch.recv_some(sizeof(Header) - r.header_got, [&](const uint8_t* p, size_t k) {
          std::memcpy(reinterpret_cast<uint8_t*>(&r.header) + r.header_got, p, k);
          r.header_got += k;
        });
        progress = got > 0;
        if (r.header_got == sizeof(Header)) {
          const Header& h = r.header;
          if (h.magic != Header{}.magic || h.op != code || h.seq != st.recv_seq ||
              h.bytes != st.recv_bytes || h.tag != st.tag) {
            COHORT_THROW(DistributedError, "rank ", pg->rank(), " is in ", name, " #", seq,
                         " expecting ", bytes_str(st.recv_bytes), " (tag ", st.tag, ") but ",
                         mesh.describe(st.recv_peer), " sent ", op_name(h.op), " #", h.seq,
                         " with ", bytes_str(h.bytes), " (tag ", h.tag,
                         "); every rank must issue the same collectives in the same order with "
                         "the same sizes");
          }
        }
      }
      if (r.header_got == sizeof(Header) && r.done < st.recv_bytes) {
        size_t got;
        if (!st.reduce) {
          got = ch.recv_some(st.recv_bytes - r.done, [&](const uint8_t* p, size_t k) {
            std::memcpy(st.recv_ptr + r.done, p, k);
            r.done += k;
          });
        } else {
          // Bytes arrive in arbitrary pieces; whole elements are reduced straight from the
          // channel, a split element waits in `carry`.
          const size_t want = st.recv_bytes - r.done - r.carry_n;
          got = ch.recv_some(want, [&](const uint8_t* p, size_t k) {
            if (r.carry_n) {
              size_t take = std::min(elem - r.carry_n, k);
              std::memcpy(r.carry + r.carry_n, p, take);
              r.carry_n += take;
              p += take;
              k -= take;
              if (r.carry_n == elem) {
                reduce_into(dtype, reduce, st.recv_ptr + r.done, r.carry, 1);
                if (st.divide_by) divide(dtype, st.recv_ptr + r.done, 1, st.divide_by);
                r.done += elem;
                r.carry_n = 0;
              }
            }
            const size_t whole = k / elem;
            if (whole) {
              reduce_into(dtype, reduce, st.recv_ptr + r.done, p, whole);
              // Before `done` moves: a step forwarding these bytes may send them at once.
              if (st.divide_by) divide(dtype, st.recv_ptr + r.done, whole, st.divide_by);
              r.done += whole * elem;
            }
            const size_t rest = k - whole * elem;
            if (rest) {
              std::memcpy(r.carry, p + whole * elem, rest);
              r.carry_n = rest;
            }
          });
        }
        progress = progress || got > 0;
      }
      if (recv_complete(ri)) {
        ++ri;
        progress = true;
      }
    }
    // Send side, in step order; a step waits for the receive it forwards from.
    while (si < n && steps[si].send_peer < 0) ++si;
    if (si < n) {
      Step& st = steps[si];
      size_t avail = st.send_bytes;
      if (st.dep >= 0 && !recv_complete(static_cast<size_t>(st.dep)))
        avail = rs[st.dep].header_got == sizeof(Header) ? std::min(avail, rs[st.dep].done) : 0;
      Channel& ch = mesh.send_channel(st.send_peer);
      const size_t limit = sizeof(Header) + avail;
      while (sent[si] < limit) {
        size_t k;
        if (sent[si] < sizeof(Header)) {
          k = ch.send_some(reinterpret_cast<const uint8_t*>(&sh[si]) + sent[si],
                           sizeof(Header) - sent[si]);
        } else {
          k = ch.send_some(st.send_ptr + (sent[si] - sizeof(Header)), limit - sent[si]);
        }
        if (k == 0) break;
        sent[si] += k;
        progress = true;
      }
      if (sent[si] == sizeof(Header) + st.send_bytes) {
        ++si;
        progress = true;
      }
    }
    if (progress) {
      mesh.busy();
      blocked_since = Clock::time_point{};
    } else {
      const auto now = Clock::now();
      if (blocked_since == Clock::time_point{}) blocked_since = now;
      // A rank that failed says so in the store; without looking, everyone else would sit out
      // the whole timeout waiting for it.
      if (now - blocked_since > std::chrono::milliseconds(200) && now >= next_abort_check) {
        next_abort_check = now + std::chrono::milliseconds(500);
        if (auto failure = pg->monitor_->posted_failure())
          pg->monitor_->throw_abandoned(name, seq, *failure);
      }
      if (now > deadline) {
        std::vector<int> waiting;
        if (ri < n) waiting.push_back(steps[ri].recv_peer);
        if (si < n) waiting.push_back(steps[si].send_peer);
        timed_out(waiting);
      }
      mesh.idle(active);
    }
  }
}

void CpuProcessGroup::Op::timed_out(const std::vector<int>& waiting_on) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", static_cast<double>(timeout.count()) / 1000.0);
  std::string msg = name + " #" + std::to_string(seq) + " timed out after " + secs + " s on rank " +
                    std::to_string(pg->rank());
  if (!waiting_on.empty()) msg += " waiting for " + pg->mesh_->describe(waiting_on.front());
  if (collective) msg += pg->monitor_->who_never_entered(seq);
  COHORT_THROW(TimeoutError, msg);
}

// ------------------------------------------------------------------------------------------

namespace {

// The address peers on other nodes reach this rank at: the one this host uses towards the
// TcpStore; without one (a FileStore), the first non-loopback IPv4 interface that is up.
std::string tcp_address_of(const std::shared_ptr<Store>& store) {
  Store* s = store.get();
  while (auto* p = dynamic_cast<PrefixStore*>(s)) s = p->underlying().get();
  if (auto* t = dynamic_cast<TcpStore*>(s)) return t->local_address();
  std::string found = "127.0.0.1";
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return found;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || !(a->ifa_flags & IFF_UP) ||
        (a->ifa_flags & IFF_LOOPBACK))
      continue;
    char text[INET_ADDRSTRLEN];
    if (inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text,
                  sizeof text)) {
      found = text;
      break;
    }
  }
  freeifaddrs(list);
  return found;
}

}  // namespace

CpuProcessGroup::CpuProcessGroup(std::shared_ptr<Store> store, int rank, int size,
                                 ProcessGroupOptions options)
    : ProcessGroup(rank, size),
      store_(std::move(store)),
      options_(std::move(options)),
      p2p_sent_(size, 0),
      p2p_received_(size, 0) {
  if (options_.transport != "auto" && options_.transport != "tcp" && options_.transport != "shm")
    COHORT_THROW(ConfigError, "unknown cpu transport '", options_.transport,
                 "'; expected auto, tcp or shm");
  const std::string address = options_.address.empty() ? tcp_address_of(store_) : options_.address;
  mesh_ = std::make_unique<Mesh>(store_, rank, size, options_.transport, address, options_.timeout);
  cores_ = core::available_cores();  // a system call: not once per operation
  all_shm_ = true;
  for (int r = 0; r < size; ++r)
    if (r != rank && !mesh_->is_shm(r)) all_shm_ = false;
  monitor_ = std::make_unique<GroupMonitor>(store_, rank, size);
  runner_ = std::make_unique<OpRunner>(kInlineBytes);
}

size_t CpuProcessGroup::inline_bytes() const {
  // A shared-memory reduction is CPU work. When this node's ranks already keep every core busy
  // with their compute threads, a progress thread only takes turns with compute and adds context
  // switches (2-rank MLP DDP on 2 cores: 19k samples/s with it, 23k without), so operations run on
  // the caller's thread. Over TCP the progress thread mostly waits on the network: overlap pays.
  if (all_shm_ && static_cast<int64_t>(size_) * core::get_num_threads() >= cores_) return SIZE_MAX;
  return kInlineBytes;
}

// The runner goes first (it finishes what is queued), then the monitor publishes its last report.
CpuProcessGroup::~CpuProcessGroup() = default;

std::shared_ptr<Work> CpuProcessGroup::enqueue(const char* name, Millis timeout, bool collective,
                                               size_t bytes, std::function<void(Op&)> body) {
  auto op = std::make_shared<Op>();
  op->name = name;
  op->static_name = name;
  op->collective = collective;
  op->timeout = timeout.count() > 0 ? timeout : options_.timeout;
  op->body = std::move(body);
  op->work = std::make_shared<Work>();
  op->pg = this;
  runner_->set_inline_bytes(inline_bytes());
  runner_->submit(bytes, collective, [this, op](uint64_t seq) {
    op->seq = seq;
    execute(*op);
  });
  return op->work;
}

void CpuProcessGroup::execute(Op& op) {
  if (broken_) {
    op.work->finish(GroupMonitor::failed_earlier(op.name, broken_));
    return;
  }
  if (op.collective) monitor_->entered(op.seq, op.static_name);
  op.deadline = Clock::now() + op.timeout;
  try {
    op.body(op);
    op.work->finish();
  } catch (const std::exception&) {
    // Channels may hold half a message now; nothing later can be trusted to line up.
    broken_ = monitor_->fail(std::current_exception());
    op.work->finish(broken_);
  }
}

// ------------------------------------------------------------------------------------------
// Algorithms. Buffers are byte ranges of contiguous tensors; chunk boundaries fall on elements.

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
  return enqueue("allreduce", o.timeout, true, t.nbytes(), [this, tensor, o](Op& op) {
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
  });
}

std::shared_ptr<Work> CpuProcessGroup::broadcast(Tensor& t, const BroadcastOptions& o) {
  check_tensor(t, "broadcast", "cpu");
  check_root(o.root, size_, "broadcast");
  Tensor tensor = t;
  return enqueue("broadcast", o.timeout, true, t.nbytes(), [this, tensor, o](Op& op) {
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
  });
}

std::shared_ptr<Work> CpuProcessGroup::reduce(Tensor& t, const ReduceOptions& o) {
  check_tensor(t, "reduce", "cpu");
  check_reducible(t.dtype(), o.op, "reduce");
  check_root(o.root, size_, "reduce");
  Tensor tensor = t;
  return enqueue("reduce", o.timeout, true, t.nbytes(), [this, tensor, o](Op& op) {
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
  });
}

std::shared_ptr<Work> CpuProcessGroup::allgather(Tensor& out, const Tensor& in,
                                                 const CollectiveOptions& o) {
  check_tensor(out, "allgather", "cpu");
  check_tensor(in, "allgather", "cpu");
  check_allgather(out, in, size_);
  Tensor output = out, input = in;
  return enqueue("allgather", o.timeout, true, out.nbytes(), [this, output, input](Op& op) {
    op.code = kAllgather;
    const size_t block = input.nbytes();
    uint8_t* buf = static_cast<uint8_t*>(output.raw_data());
    if (buf + rank_ * block != input.raw_data())
      std::memmove(buf + rank_ * block, input.raw_data(), block);
    if (size_ == 1) return;
    Chunks c(static_cast<size_t>(input.numel()) * size_, input.element_size(), size_);
    ring(op, rank_, size_, buf, c, false, true);
  });
}

std::shared_ptr<Work> CpuProcessGroup::reduce_scatter(Tensor& out, const Tensor& in,
                                                      const ReduceScatterOptions& o) {
  check_tensor(out, "reduce_scatter", "cpu");
  check_tensor(in, "reduce_scatter", "cpu");
  check_reducible(in.dtype(), o.op, "reduce_scatter");
  check_reduce_scatter(out, in, size_);
  Tensor output = out, input = in;
  return enqueue("reduce_scatter", o.timeout, true, in.nbytes(), [this, output, input, o](Op& op) {
    op.code = kReduceScatter;
    op.dtype = input.dtype();
    op.reduce = o.op;
    op.elem = input.element_size();
    const size_t block = output.nbytes();
    auto* in_bytes = static_cast<uint8_t*>(input.raw_data());
    // In place (output is input's block `rank`, as NCCL defines it) the ring reduces in the input
    // itself: no copy of the whole input, and the average is taken as the last partial sum lands.
    const bool in_place = in_bytes + rank_ * block == output.raw_data();
    std::unique_ptr<uint8_t[]> tmp;
    uint8_t* buf = in_bytes;
    if (!in_place) {
      tmp.reset(new uint8_t[input.nbytes()]);  // not value-initialised: every byte is copied over
      std::memcpy(tmp.get(), in_bytes, input.nbytes());
      buf = tmp.get();
    }
    const bool average = o.op == ReduceOp::kAvg && size_ > 1;
    if (size_ > 1) {
      Chunks c(static_cast<size_t>(input.numel()), op.elem, size_);
      ring(op, rank_, size_, buf, c, true, false, average);
    }
    if (!in_place) std::memcpy(output.raw_data(), buf + rank_ * block, block);
  });
}

std::shared_ptr<Work> CpuProcessGroup::alltoall(Tensor& out, const Tensor& in,
                                                const CollectiveOptions& o) {
  check_tensor(out, "alltoall", "cpu");
  check_tensor(in, "alltoall", "cpu");
  check_alltoall(out, in, size_);
  Tensor output = out, input = in;
  return enqueue("alltoall", o.timeout, true, in.nbytes(), [this, output, input](Op& op) {
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
  });
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
  return enqueue("send", Millis(0), false, t.nbytes(), [this, tensor, dst, tag](Op& op) {
    op.code = kSendRecv;
    std::vector<Step> steps(1);
    steps[0].send_peer = dst;
    steps[0].send_ptr = static_cast<const uint8_t*>(tensor.raw_data());
    steps[0].send_bytes = tensor.nbytes();
    steps[0].tag = static_cast<uint32_t>(tag);
    steps[0].send_seq = p2p_sent_[dst]++;
    op.run(steps);
  });
}

std::shared_ptr<Work> CpuProcessGroup::recv(Tensor& t, int src, int tag) {
  check_tensor(t, "recv", "cpu");
  check_peer(src, rank_, size_, "recv", "source");
  Tensor tensor = t;
  return enqueue("recv", Millis(0), false, t.nbytes(), [this, tensor, src, tag](Op& op) {
    op.code = kSendRecv;
    std::vector<Step> steps(1);
    steps[0].recv_peer = src;
    steps[0].recv_ptr = static_cast<uint8_t*>(tensor.raw_data());
    steps[0].recv_bytes = tensor.nbytes();
    steps[0].tag = static_cast<uint32_t>(tag);
    steps[0].recv_seq = p2p_received_[src]++;
    op.run(steps);
  });
}

}  // namespace cohort::collectives::cpu
