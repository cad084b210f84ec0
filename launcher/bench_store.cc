#include "launcher/bench_store.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "collectives/store/tcp_store.h"
#include "collectives/store/tcp_store_protocol.h"
#include "core/util/error.h"
#include "launcher/store_process.h"

namespace cohort::launcher {
namespace {

using Clock = std::chrono::steady_clock;
using collectives::JobToken;
using collectives::StoreRole;
using collectives::TcpStore;
using collectives::TcpStoreOptions;

int descriptors(pid_t pid) {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// A raw loopback connection; -1 when the connect fails.
int connect_raw(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;  // as TcpStore's own connections: no small message waits on Nagle
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void send_all(int fd, const std::string& bytes) {
  for (size_t off = 0; off < bytes.size();) {
    const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

bool recv_exact(int fd, char* into, size_t n) {
  for (size_t got = 0; got < n;) {
    const ssize_t r = ::recv(fd, into + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// A connection that passes the handshake with `token` as a worker, or -1.
int authenticated(uint16_t port, const JobToken& token) {
  const int fd = connect_raw(port);
  if (fd < 0) return -1;
  char challenge[collectives::wire::kChallengeBytes];
  if (!recv_exact(fd, challenge, sizeof challenge)) {
    ::close(fd);
    return -1;
  }
  const std::string snonce(challenge + sizeof collectives::wire::kMagic,
                           collectives::wire::kNonceBytes);
  const std::string cnonce(collectives::wire::kNonceBytes, 'a');
  std::string response(collectives::wire::kMagic, sizeof collectives::wire::kMagic);
  response += static_cast<char>(StoreRole::kWorker);
  response += cnonce;
  response += collectives::wire::client_proof(token.role_key(StoreRole::kWorker), snonce, cnonce,
                                              StoreRole::kWorker);
  send_all(fd, response);
  char verdict[collectives::wire::kVerdictBytes];
  if (!recv_exact(fd, verdict, sizeof verdict) || verdict[0] != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

struct Honest {
  std::atomic<int64_t> ops{0}, errors{0};
};

// Client c's loop: ADD to a shared counter, SET its own key, GET it back, COMPARE_SET.
void honest_client(int c, uint16_t port, const JobToken& token, Clock::time_point end, Honest& h,
                   std::atomic<int64_t>& adds, std::vector<int64_t>& last_written) {
  try {
    TcpStoreOptions o;
    o.port = port;
    o.token = token;
    o.timeout = std::chrono::seconds(120);
    TcpStore s(o);
    for (int64_t i = 0; Clock::now() < end; ++i) {
      const std::string key = "honest/" + std::to_string(c) + "/" + std::to_string(i % 64);
      switch (i % 4) {
        case 0:
          s.add("honest/counter", 1);
          ++adds;
          break;
        case 1:
          s.set(key, std::to_string(i));
          last_written[static_cast<size_t>(c)] = i;
          break;
        case 2:
          if (s.get("honest/" + std::to_string(c) + "/" + std::to_string((i - 1) % 64)) !=
              std::to_string(i - 1))
            ++h.errors;
          break;
        default:
          s.compare_set("honest/cas/" + std::to_string(c), "", "x");
      }
      ++h.ops;
    }
  } catch (const std::exception& e) {
    if (h.errors++ == 0) std::fprintf(stderr, "bench store: honest client %d: %s\n", c, e.what());
  }
}

// One attacker's loop: a random attack at a time until `end`.
void attacker(int a, uint16_t port, const JobToken& worker_token, Clock::time_point end,
              std::atomic<int64_t>& attacks) {
  std::mt19937 rng(static_cast<unsigned>(a));
  std::vector<int> idle;
  while (Clock::now() < end) {
    switch (rng() % 4) {
      case 0: {  // garbage instead of a handshake
        const int fd = connect_raw(port);
        if (fd < 0) break;
        std::string junk(1 + rng() % 256, '\0');
        for (auto& ch : junk) ch = static_cast<char>(rng());
        send_all(fd, junk);
        ::close(fd);
        break;
      }
      case 1: {  // a 1 GiB length prefix, authenticated or not, then gone
        const int fd = rng() % 2 ? authenticated(port, worker_token) : connect_raw(port);
        if (fd < 0) break;
        const uint32_t huge = 1u << 30;
        send_all(fd, std::string(reinterpret_cast<const char*>(&huge), 4));
        ::close(fd);
        break;
      }
      case 2: {  // a wait for a key that never comes, abandoned (a worker's token: a buggy worker)
        const int fd = authenticated(port, worker_token);
        if (fd < 0) break;
        send_all(fd, collectives::wire::encode(collectives::wire::kWait,
                                               {"never/" + std::to_string(rng())}));
        ::close(fd);
        break;
      }
      default: {  // a connection that never says a word, kept until the server drops it
        const int fd = connect_raw(port);
        if (fd < 0) break;
        idle.push_back(fd);
        if (idle.size() > 16) {
          ::close(idle.front());
          idle.erase(idle.begin());
        }
      }
    }
    ++attacks;
  }
  for (int fd : idle) ::close(fd);
}

struct Phase {
  double ops_per_s = 0;
  int64_t errors = 0, lost = 0;
  long rss_max = 0;
  int fds_max = 0;
  int64_t attacks = 0;
};

// Honest clients on `srv` for o.seconds, beside `attackers` threads attacking `target` (srv
// itself, or a decoy server in another process, which measures what the attackers' own CPU takes
// from the honest clients on this machine).
Phase run_phase(const BenchStoreOptions& o, const ServerProcess& srv, const JobToken& token,
                int attackers, uint16_t target) {
  Honest h;
  std::atomic<int64_t> adds{0}, attacks{0};
  std::vector<int64_t> last(static_cast<size_t>(o.clients), -1);
  const auto start = Clock::now();
  const auto end =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c)
    threads.emplace_back(honest_client, c, srv.port, std::cref(token), end, std::ref(h),
                         std::ref(adds), std::ref(last));
  const JobToken worker = token.worker();
  for (int a = 0; a < attackers; ++a)
    threads.emplace_back(attacker, a, target, std::cref(worker), end, std::ref(attacks));
  Phase p;
  while (Clock::now() < end) {
    p.rss_max = std::max(p.rss_max, rss_kib(srv.pid));
    p.fds_max = std::max(p.fds_max, descriptors(srv.pid));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (auto& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  p.ops_per_s = static_cast<double>(h.ops.load()) / secs;
  p.errors = h.errors.load();
  p.attacks = attacks.load();
  // Nothing written may be missing: the counter holds every ADD, each client's last SET is there.
  TcpStoreOptions co;
  co.port = srv.port;
  co.token = token;
  TcpStore check(co);
  const int64_t counted =
      check.check({"honest/counter"}) ? std::stoll(check.get("honest/counter")) : 0;
  if (counted != adds.load()) p.lost += std::abs(counted - adds.load());
  for (int c = 0; c < o.clients; ++c) {
    const int64_t i = last[static_cast<size_t>(c)];
    if (i < 0) continue;
    const std::string key = "honest/" + std::to_string(c) + "/" + std::to_string(i % 64);
    if (!check.check({key}) || check.get(key) != std::to_string(i)) ++p.lost;
  }
  check.delete_key("honest/counter");
  return p;
}

enum class Connect { kRaw, kHandshake, kTcpStore };

double connect_us(uint16_t port, const JobToken& token, int n, Connect how) {
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    if (how == Connect::kHandshake) {
      const int fd = authenticated(port, token);
      if (fd < 0) COHORT_THROW(Error, "bench store: the handshake failed");
      // One request, as every real connection makes (and the server's accept budget counts).
      send_all(fd, collectives::wire::encode(collectives::wire::kCheck, {"connect"}));
      char reply[64];
      uint32_t n = 0;
      if (!recv_exact(fd, reinterpret_cast<char*>(&n), 4) || n > sizeof reply ||
          !recv_exact(fd, reply, n))
        COHORT_THROW(Error, "bench store: no reply after the handshake");
      ::close(fd);
    } else if (how == Connect::kTcpStore) {
      TcpStoreOptions o;
      o.port = port;
      o.token = token;
      TcpStore s(o);
      s.check({"connect"});  // as every real connection, it serves a request
    } else {
      const int fd = connect_raw(port);
      if (fd >= 0) ::close(fd);
    }
  }
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / n;
}

}  // namespace

int bench_store(const BenchStoreOptions& o) {
  const JobToken token = JobToken::generate();
  ServerProcess srv = start_server(token);
  const long rss0 = rss_kib(srv.pid);
  const int fds0 = descriptors(srv.pid);

  // Connections that never prove the token use up the server's accept budget (refilled at
  // TcpStoreLimits::accept_rate): the raw ones go last, and the phases wait for its refill.
  const double authed = connect_us(srv.port, token, o.connects, Connect::kHandshake);
  const double client = connect_us(srv.port, token, o.connects, Connect::kTcpStore);
  const double plain = connect_us(srv.port, token, o.connects, Connect::kRaw);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  double request = 0;  // one request's round trip on an open connection
  {
    TcpStoreOptions co;
    co.port = srv.port;
    co.token = token;
    TcpStore s(co);
    const auto start = Clock::now();
    for (int i = 0; i < o.connects; ++i) s.check({"connect"});
    request = std::chrono::duration<double, std::micro>(Clock::now() - start).count() / o.connects;
  }
  std::printf("== connecting: %d sequential connections to the store ==\n", o.connects);
  std::printf("TCP connect alone                          %8.1f us\n", plain);
  std::printf("one request on an open connection          %8.1f us\n", request);
  std::printf(
      "TCP connect + token handshake + 1 request  %8.1f us   (the handshake: %.1f us; goal <= "
      "1000)\n",
      authed, authed - plain - request);
  std::printf(
      "a TcpStore client + 1 request              %8.1f us   (resolving, io context, handshake)\n",
      client);

  const Phase calm = run_phase(o, srv, token, 0, srv.port);
  const long rss1 = rss_kib(srv.pid);
  const int fds1 = descriptors(srv.pid);
  ServerProcess decoy = start_server(token);
  const Phase beside = run_phase(o, srv, token, o.attackers, decoy.port);
  ::close(decoy.stop_fd);
  ::waitpid(decoy.pid, nullptr, 0);
  const Phase attacked = run_phase(o, srv, token, o.attackers, srv.port);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // dropped connections finish closing
  const long rss2 = rss_kib(srv.pid);
  const int fds2 = descriptors(srv.pid);

  std::printf("\n== %d honest clients for %.0f s, alone and beside %d attackers ==\n", o.clients,
              o.seconds, o.attackers);
  std::printf("%-22s %14s %8s %10s %14s %10s\n", "", "honest ops/s", "errors", "keys lost",
              "server RSS max", "fds max");
  std::printf("%-22s %14.0f %8lld %10lld %11ld KiB %10d\n", "alone", calm.ops_per_s,
              static_cast<long long>(calm.errors), static_cast<long long>(calm.lost), calm.rss_max,
              calm.fds_max);
  std::printf("%-22s %14.0f %8lld %10lld %11ld KiB %10d\n", "attackers on a decoy",
              beside.ops_per_s, static_cast<long long>(beside.errors),
              static_cast<long long>(beside.lost), beside.rss_max, beside.fds_max);
  std::printf("%-22s %14.0f %8lld %10lld %11ld KiB %10d\n", "under attack", attacked.ops_per_s,
              static_cast<long long>(attacked.errors), static_cast<long long>(attacked.lost),
              attacked.rss_max, attacked.fds_max);
  std::printf("attacks made: %lld (garbage, 1 GiB prefixes, abandoned waits, silent connections)\n",
              static_cast<long long>(attacked.attacks));
  std::printf("honest ops/s under attack / alone: %.2fx (goal >= 0.80)\n",
              attacked.ops_per_s / std::max(calm.ops_per_s, 1.0));
  std::printf(
      "the machine's ceiling, attackers on a decoy / alone: %.2fx (their own CPU); "
      "under attack / decoy: %.2fx (what the server loses to them)\n",
      beside.ops_per_s / std::max(calm.ops_per_s, 1.0),
      attacked.ops_per_s / std::max(beside.ops_per_s, 1.0));
  std::printf("server RSS: %ld KiB at start, %ld after the calm phase, %ld after the attack\n",
              rss0, rss1, rss2);
  std::printf("server descriptors: %d at start, %d after the calm phase, %d after the attack\n",
              fds0, fds1, fds2);

  ::close(srv.stop_fd);
  int status = 0;
  ::waitpid(srv.pid, &status, 0);
  return calm.errors + calm.lost + beside.errors + beside.lost + attacked.errors + attacked.lost ==
                 0
             ? 0
             : 1;
}

}  // namespace cohort::launcher
