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
#include "collectives/cpu/cpu_op.h"
#include "collectives/cpu/reduce_kernels.h"
#include "collectives/flight_recorder.h"
#include "collectives/store/tcp_store.h"
#include "core/util/env.h"
#include "core/util/error.h"
#include "core/util/threads.h"

namespace cohort::collectives::cpu {

using core::DType;
using core::Tensor;
using Clock = std::chrono::steady_clock;

namespace {

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
    sh[i].algorithm = static_cast<uint32_t>(algorithm);
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
          if (h.magic == Header{}.magic && h.op == code && h.seq == st.recv_seq &&
              h.algorithm != static_cast<uint32_t>(algorithm)) {
            const auto theirs = static_cast<Algorithm>(h.algorithm);
            COHORT_THROW(DistributedError, "rank ", pg->rank(), " runs ", name, " #", seq,
                         " with the ", algorithm_name(algorithm), " algorithm but ",
                         mesh.describe(st.recv_peer), " with ",
                         h.algorithm <= static_cast<uint32_t>(Algorithm::kHierarchical)
                             ? algorithm_name(theirs)
                             : "an unknown one",
                         "; every rank must set the same ", env::kAllreduceAlgorithm);
          }
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
        avail = rs[st.dep].header_got == sizeof(Header) && !st.dep_whole
                    ? std::min(avail, rs[st.dep].done)
                    : 0;
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
  // Nodes as the mesh found them (every rank sees the same records, so the same layout).
  for (int r = 0; r < size; ++r) {
    auto it = std::find_if(nodes_.begin(), nodes_.end(), [&](const std::vector<int>& n) {
      return mesh_->peer(n.front()).node_id == mesh_->peer(r).node_id;
    });
    if (it == nodes_.end()) {
      nodes_.push_back({r});
      it = nodes_.end() - 1;
    } else {
      it->push_back(r);
    }
    if (r == rank) node_ = static_cast<int>(it - nodes_.begin());
  }
  if (!options_.allreduce_algorithm.empty()) {
    forced_ = parse_algorithm(options_.allreduce_algorithm);
  } else if (const char* from_env = env::get(env::kAllreduceAlgorithm)) {
    try {
      forced_ = parse_algorithm(from_env);
    } catch (const ConfigError& e) {
      COHORT_THROW(ConfigError, env::kAllreduceAlgorithm, ": ", e.what());
    }
  }
  monitor_ = std::make_unique<GroupMonitor>(store_, rank, size);
  flight_group_ = FlightRecorder::get().next_group();
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
                                               size_t bytes, std::function<void(Op&)> body,
                                               const core::Tensor* of, int peer) {
  auto op = std::make_shared<Op>();
  op->name = name;
  op->static_name = name;
  op->collective = collective;
  op->timeout = timeout.count() > 0 ? timeout : options_.timeout;
  op->body = std::move(body);
  op->work = std::make_shared<Work>();
  op->pg = this;
  op->flight =
      FlightRecorder::get().queued(flight_group_, collective, name, static_cast<int64_t>(bytes),
                                   peer, of ? core::dtype_name(of->dtype()) : "");
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
  FlightRecorder::get().started(op.flight, op.seq);
  op.deadline = Clock::now() + op.timeout;
  try {
    op.body(op);
    FlightRecorder::get().ended(op.flight, true);
    op.work->finish();
  } catch (...) {
    FlightRecorder::get().ended(op.flight, false);
    // Where this rank was, for `cohort diagnose`: written before anyone is told, so that the
    // launcher, which stops the job when told, finds it.
    FlightRecorder::get().dump(std::current_exception());
    // Channels may hold half a message now; nothing later can be trusted to line up.
    broken_ = monitor_->fail(std::current_exception());
    op.work->finish(broken_);
  }
}

}  // namespace cohort::collectives::cpu
