#include "collectives/cpu/transport.h"

#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <thread>
#include <utility>  // Boost 1.74's asio uses std::exchange without including it

#include <boost/asio.hpp>

#include "collectives/futex.h"
#include "collectives/shared_memory.h"
#include "core/util/env.h"
#include "core/util/error.h"
#include "core/util/threads.h"

namespace cohort::collectives::cpu {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

size_t ring_bytes() {
  static const size_t bytes = [] {
    const auto v = static_cast<size_t>(
        env::integer(env::kShmRingBytes, int64_t{1} << 20, 4096, int64_t{1} << 30));
    if ((v & (v - 1)) != 0)
      COHORT_THROW(ConfigError, "environment variable ", env::kShmRingBytes, "=", v,
                   " is not a power of two");
    return v;
  }();
  return bytes;
}

// --- shared memory -------------------------------------------------------------------------

struct alignas(64) Control {
  std::atomic<uint32_t> bell{0};
  alignas(64) std::atomic<uint32_t> sleeping{0};
};

struct alignas(64) RingHeader {
  std::atomic<uint64_t> head{0};              // bytes ever written (producer)
  alignas(64) std::atomic<uint64_t> tail{0};  // bytes ever consumed (consumer)
};
constexpr size_t kRingDataOffset = 4096;

void ring_bell(Control* c) {
  c->bell.fetch_add(1, std::memory_order_seq_cst);
  if (c->sleeping.load(std::memory_order_seq_cst)) futex_wake(&c->bell);
}

class ShmSend final : public Channel {
 public:
  ShmSend(int peer, void* seg, size_t cap, Control* receiver)
      : Channel(peer),
        h_(static_cast<RingHeader*>(seg)),
        data_(static_cast<uint8_t*>(seg) + kRingDataOffset),
        cap_(cap),
        receiver_(receiver) {}
  size_t send_some(const uint8_t* p, size_t n) override {
    const uint64_t head = h_->head.load(std::memory_order_relaxed);
    const uint64_t tail = h_->tail.load(std::memory_order_acquire);
    n = std::min<size_t>(n, cap_ - static_cast<size_t>(head - tail));
    if (n == 0) return 0;
    const size_t at = static_cast<size_t>(head & (cap_ - 1));
    const size_t first = std::min(n, cap_ - at);
    std::memcpy(data_ + at, p, first);
    if (n > first) std::memcpy(data_, p + first, n - first);
    h_->head.store(head + n, std::memory_order_release);
    ring_bell(receiver_);
    return n;
  }
  size_t recv_some(size_t, const Sink&) override { return 0; }
  const char* kind() const override { return "shm"; }

 private:
  RingHeader* h_;
  uint8_t* data_;
  size_t cap_;
  Control* receiver_;
};

class ShmRecv final : public Channel {
 public:
  ShmRecv(int peer, void* seg, size_t cap, Control* sender)
      : Channel(peer),
        h_(static_cast<RingHeader*>(seg)),
        data_(static_cast<uint8_t*>(seg) + kRingDataOffset),
        cap_(cap),
        sender_(sender) {}
  size_t send_some(const uint8_t*, size_t) override { return 0; }
  size_t recv_some(size_t n, const Sink& sink) override {
    const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
    const uint64_t head = h_->head.load(std::memory_order_acquire);
    n = std::min<size_t>(n, static_cast<size_t>(head - tail));
    if (n == 0) return 0;
    const size_t at = static_cast<size_t>(tail & (cap_ - 1));
    const size_t first = std::min(n, cap_ - at);
    sink(data_ + at, first);
    if (n > first) sink(data_, n - first);
    h_->tail.store(tail + n, std::memory_order_release);
    ring_bell(sender_);
    return n;
  }
  const char* kind() const override { return "shm"; }

 private:
  RingHeader* h_;
  uint8_t* data_;
  size_t cap_;
  Control* sender_;
};

// --- TCP -----------------------------------------------------------------------------------

class TcpChannel final : public Channel {
 public:
  TcpChannel(int peer, int fd, std::string who) : Channel(peer), fd_(fd), who_(std::move(who)) {
    staging_.resize(256 << 10);
  }
  ~TcpChannel() override { ::close(fd_); }
  size_t send_some(const uint8_t* p, size_t n) override {
    while (true) {
      ssize_t w = ::send(fd_, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w >= 0) return static_cast<size_t>(w);
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      COHORT_THROW(DistributedError, "lost the connection to ", who_, ": ", std::strerror(errno),
                   "; it has probably exited");
    }
  }
  size_t recv_some(size_t n, const Sink& sink) override {
    n = std::min(n, staging_.size());
    if (n == 0) return 0;
    while (true) {
      ssize_t r = ::recv(fd_, staging_.data(), n, MSG_DONTWAIT);
      if (r > 0) {
        sink(staging_.data(), static_cast<size_t>(r));
        return static_cast<size_t>(r);
      }
      if (r == 0)
        COHORT_THROW(DistributedError, who_, " closed its connection; it has probably exited");
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      COHORT_THROW(DistributedError, "lost the connection to ", who_, ": ", std::strerror(errno),
                   "; it has probably exited");
    }
  }
  int fd() const override { return fd_; }
  const char* kind() const override { return "tcp"; }

 private:
  int fd_;
  std::string who_;
  std::vector<uint8_t> staging_;
};

struct Hello {
  uint32_t magic = 0x436f6831;  // "Coh1"
  uint32_t rank = 0;
  uint64_t token = 0;
};

}  // namespace

struct Mesh::Shm {
  std::vector<Mapping> maps;
  Control* mine = nullptr;
  // Names still linked in /dev/shm; unlinked here too, because a Mesh whose set-up fails (a peer
  // never arrives) is never destroyed, only its members are.
  std::vector<std::string> created;
  ~Shm() {
    for (const auto& n : created) unlink_segment(n);
  }
};

struct Mesh::Tcp {
  asio::io_context io;
  std::vector<int> fds;  // every peer socket, for poll
};

namespace {

// Runs io until `done` or the deadline; returns whether it finished.
bool run_until(asio::io_context& io, bool& done, Clock::time_point deadline) {
  io.restart();
  io.run_until(deadline);
  if (done) return true;
  io.stop();
  return false;
}

}  // namespace

Mesh::Mesh(std::shared_ptr<Store> store, int rank, int size, const std::string& transport,
           const std::string& address, std::chrono::milliseconds timeout)
    : rank_(rank),
      size_(size),
      peers_(size),
      send_(size),
      recv_(size),
      shm_peer_(size, false),
      shm_(std::make_unique<Shm>()),
      tcp_(std::make_unique<Tcp>()) {
  const auto deadline = Clock::now() + timeout;
  // A token shared by the group names its shared-memory segments and vouches for TCP peers.
  if (rank == 0) {
    std::random_device rd;
    store->set("mesh/token", std::to_string((uint64_t{rd()} << 32) ^ rd() ^ uint64_t(::getpid())));
  }
  const uint64_t token = std::stoull(store->get("mesh/token"));

  tcp::acceptor acceptor(tcp_->io, tcp::endpoint(tcp::v4(), 0));
  PeerInfo me;
  me.node_id = node_identity(me.host);
  me.pid = ::getpid();
  me.address = address + ":" + std::to_string(acceptor.local_endpoint().port());
  store->set("mesh/peer/" + std::to_string(rank),
             me.host + "\n" + me.node_id + "\n" + std::to_string(me.pid) + "\n" + me.address);
  for (int r = 0; r < size; ++r) {
    if (r == rank) {
      peers_[r] = me;
      continue;
    }
    std::string v = store->get("mesh/peer/" + std::to_string(r));
    std::vector<std::string> parts;
    size_t start = 0;
    for (size_t i = 0; i <= v.size(); ++i)
      if (i == v.size() || v[i] == '\n') {
        parts.push_back(v.substr(start, i - start));
        start = i + 1;
      }
    if (parts.size() != 4)
      COHORT_THROW(DistributedError, "malformed mesh record for rank ", r, " in the store");
    peers_[r] = PeerInfo{parts[0], parts[1], std::stoi(parts[2]), parts[3]};
  }
  for (int r = 0; r < size; ++r) {
    if (r == rank) continue;
    const bool same_node = peers_[r].node_id == me.node_id;
    if (transport == "shm" && !same_node)
      COHORT_THROW(ConfigError, "transport shm was forced but ", describe(r),
                   " is on another node");
    shm_peer_[r] = transport == "shm" || (transport == "auto" && same_node);
  }

  // Shared memory: create outgoing rings and our doorbell, map the peers', then unlink ours so
  // nothing is left in /dev/shm whatever happens later.
  bool any_shm = false;
  for (int r = 0; r < size; ++r) any_shm = any_shm || shm_peer_[r];
  if (any_shm) {
    const size_t cap = ring_bytes();
    remove_orphaned_segments();  // what killed processes of earlier jobs left
    // Each rank's segments carry its own name as their owner; peers learn it from the store.
    const std::string mine = owned_segment_name(std::to_string(token)) + "-";
    auto ctl_name = [](const std::string& base, int r) {
      return base + "ctl-" + std::to_string(r);
    };
    auto ring_name = [](const std::string& base, int s, int d) {
      return base + std::to_string(s) + "-" + std::to_string(d);
    };
    std::vector<void*> out_seg(size, nullptr), in_seg(size, nullptr);
    std::vector<Control*> ctl(size, nullptr);
    shm_->maps.push_back(map_segment(ctl_name(mine, rank), sizeof(Control), true));
    shm_->created.push_back(ctl_name(mine, rank));
    shm_->mine = new (shm_->maps.back().addr()) Control();
    ctl[rank] = shm_->mine;
    for (int r = 0; r < size; ++r) {
      if (!shm_peer_[r]) continue;
      shm_->maps.push_back(map_segment(ring_name(mine, rank, r), kRingDataOffset + cap, true));
      shm_->created.push_back(ring_name(mine, rank, r));
      out_seg[r] = shm_->maps.back().addr();
      new (out_seg[r]) RingHeader();
    }
    store->set("mesh/shm_created/" + std::to_string(rank), mine);
    for (int r = 0; r < size; ++r) {
      if (!shm_peer_[r]) continue;
      const std::string key = "mesh/shm_created/" + std::to_string(r);
      store->wait({key}, std::chrono::duration_cast<Millis>(deadline - Clock::now()));
      const std::string theirs = store->get(key);
      // A name from the store goes to shm_open only if it is one of ours.
      if (theirs.rfind("/cohort-", 0) != 0 || theirs.size() > 200 ||
          theirs.find('/', 1) != std::string::npos)
        COHORT_THROW(DistributedError, describe(r), " published a malformed segment name");
      shm_->maps.push_back(map_segment(ctl_name(theirs, r), sizeof(Control), false));
      ctl[r] = static_cast<Control*>(shm_->maps.back().addr());
      shm_->maps.push_back(map_segment(ring_name(theirs, r, rank), kRingDataOffset + cap, false));
      in_seg[r] = shm_->maps.back().addr();
    }
    store->set("mesh/shm_mapped/" + std::to_string(rank), "1");
    for (int r = 0; r < size; ++r)
      if (shm_peer_[r])
        store->wait({"mesh/shm_mapped/" + std::to_string(r)},
                    std::chrono::duration_cast<Millis>(deadline - Clock::now()));
    for (const auto& n : shm_->created) unlink_segment(n);
    shm_->created.clear();
    for (int r = 0; r < size; ++r) {
      if (!shm_peer_[r]) continue;
      send_[r] = std::make_shared<ShmSend>(r, out_seg[r], cap, ctl[r]);
      recv_[r] = std::make_shared<ShmRecv>(r, in_seg[r], cap, ctl[r]);
    }
  }

  int local = 1;
  for (int r = 0; r < size; ++r) local += r != rank && peers_[r].node_id == me.node_id;
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cores = ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  // A rank bound to part of the node (cohort launch --cpu-bind, mpirun, srun) was given CPUs of
  // its own: binders leave oversubscribed ranks unbound. Only an unbound rank counts its peers.
  oversubscribed_ = !core::bound_to_own_cpus() && local > cores;

  // TCP: the higher rank of each pair connects to the lower one and introduces itself.
  int expected = 0;
  for (int r = rank + 1; r < size; ++r) expected += !shm_peer_[r];
  std::vector<tcp::socket> accepted;
  for (int r = 0; r < rank; ++r) {
    if (shm_peer_[r]) continue;
    const std::string& addr = peers_[r].address;
    const size_t colon = addr.rfind(':');
    tcp::endpoint ep(asio::ip::make_address(addr.substr(0, colon)),
                     static_cast<uint16_t>(std::stoi(addr.substr(colon + 1))));
    tcp::socket sock(tcp_->io);
    bool done = false;
    boost::system::error_code ec;
    sock.async_connect(ep, [&](boost::system::error_code e) {
      ec = e;
      done = true;
    });
    if (!run_until(tcp_->io, done, deadline) || ec)
      COHORT_THROW(DistributedError, "rank ", rank, " cannot connect to ", describe(r), " at ",
                   addr, ": ", done ? ec.message() : "timed out");
    Hello h;
    h.rank = static_cast<uint32_t>(rank);
    h.token = token;
    asio::write(sock, asio::buffer(&h, sizeof h));
    sock.set_option(tcp::no_delay(true));
    int fd = sock.release();
    send_[r] = recv_[r] = std::make_shared<TcpChannel>(r, fd, describe(r));
    tcp_->fds.push_back(fd);
  }
  while (expected > 0) {
    tcp::socket sock(tcp_->io);
    bool done = false;
    boost::system::error_code ec;
    acceptor.async_accept(sock, [&](boost::system::error_code e) {
      ec = e;
      done = true;
    });
    if (!run_until(tcp_->io, done, deadline) || ec)
      COHORT_THROW(TimeoutError, "rank ", rank, " timed out waiting for ", expected,
                   " higher-ranked peers to connect over TCP");
    Hello h;
    bool got = false;
    asio::async_read(sock, asio::buffer(&h, sizeof h), [&](boost::system::error_code e, size_t) {
      ec = e;
      got = true;
    });
    if (!run_until(tcp_->io, got, deadline)) {
      // The read is still pending and refers to this iteration's locals: cancel it and let its
      // handler finish here, before they go away.
      boost::system::error_code ignored;
      sock.close(ignored);
      tcp_->io.restart();
      tcp_->io.run();
      continue;  // the deadline check of the next accept ends the wait
    }
    if (ec) continue;  // a stray connection; keep waiting
    const int r = static_cast<int>(h.rank);
    if (h.magic != Hello{}.magic || h.token != token || r <= rank || r >= size || shm_peer_[r] ||
        send_[r])
      continue;
    sock.set_option(tcp::no_delay(true));
    int fd = sock.release();
    send_[r] = recv_[r] = std::make_shared<TcpChannel>(r, fd, describe(r));
    tcp_->fds.push_back(fd);
    --expected;
  }
}

Mesh::~Mesh() {
  send_.clear();
  recv_.clear();
}

std::string Mesh::describe(int r) const {
  const PeerInfo& p = peers_[r];
  if (p.host.empty()) return "rank " + std::to_string(r);
  return "rank " + std::to_string(r) + " (pid " + std::to_string(p.pid) + " on " + p.host + ")";
}

void Mesh::idle(const std::vector<int>& active) {
  ++idle_rounds_;
  // Spinning only pays when the peer has a core of its own; with more ranks on this node than
  // cores, a spinning rank takes the core the rank it waits for needs.
  if (!oversubscribed_ && idle_rounds_ < 256) {
    for (int i = 0; i < 16; ++i) cpu_relax();
    return;
  }
  if (idle_rounds_ < 512) {
    sched_yield();
    return;
  }
  // Blocking: a peer that vanished from shared memory never says so; look for it now and then.
  const auto now = Clock::now();
  if (now - last_liveness_check_ > std::chrono::milliseconds(100)) {
    last_liveness_check_ = now;
    for (int r : active)
      if (shm_peer_[r] && peers_[r].pid != ::getpid() && process_exited(peers_[r].pid))
        COHORT_THROW(DistributedError, describe(r), " has exited");
  }
  std::vector<pollfd> fds;
  for (int r : active)
    if (!shm_peer_[r]) fds.push_back(pollfd{send_[r]->fd(), POLLIN, 0});
  if (!fds.empty()) {
    ::poll(fds.data(), fds.size(), 1);
    return;
  }
  Control* c = shm_->mine;
  c->sleeping.store(1, std::memory_order_seq_cst);
  const uint32_t v = c->bell.load(std::memory_order_seq_cst);
  // A peer that rang since the last look may have done so before it could see `sleeping` (so it
  // woke nobody) and after the caller last polled the channels: poll again instead of sleeping
  // through its message.
  if (v != bell_seen_) {
    bell_seen_ = v;
    c->sleeping.store(0, std::memory_order_relaxed);
    return;
  }
  futex_wait(&c->bell, v, std::chrono::milliseconds(1));
  c->sleeping.store(0, std::memory_order_relaxed);
  bell_seen_ = c->bell.load(std::memory_order_seq_cst);
}

}  // namespace cohort::collectives::cpu
