#include "launcher/bench_rendezvous.h"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "launcher/rendezvous.h"
#include "launcher/rendezvous_protocol.h"
#include "launcher/store_process.h"

namespace cohort::launcher {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

enum Phase { kConnect, kRendezvous, kHeartbeats, kFailure, kLeave, kPhases };
const char* const kPhaseNames[kPhases] = {"connect", "rendezvous", "heartbeats", "failure",
                                          "leave"};

struct Shared;
// The barrier's completion, which runs alone when every thread has arrived: the next phase's
// start.
struct PhaseStart {
  Shared* shared;
  void operator()() noexcept;
};

struct Shared {
  explicit Shared(int n) : sync(n, PhaseStart{this}), last(kPhases) {}
  std::barrier<PhaseStart> sync;
  int phase = 0;
  Clock::time_point start[kPhases + 1]{};
  std::vector<std::atomic<int64_t>> last;  // per phase: the latest end, in ns since the start
  std::atomic<int64_t> ops[kPhases]{};
  std::atomic<int> errors{0};
  std::mutex mu;
  std::string first_error;

  void ended(Phase p) {
    const int64_t t =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start[p]).count();
    int64_t seen = last[p].load();
    while (t > seen && !last[p].compare_exchange_weak(seen, t)) {
    }
  }
  void error(const std::string& what) {
    if (errors.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(mu);
      first_error = what;
    }
  }
};

void PhaseStart::operator()() noexcept { shared->start[shared->phase++] = Clock::now(); }

struct AgentArgs {
  Shared* shared;
  const BenchRendezvousOptions* o;
  int index;
  uint16_t port;
  const collectives::JobToken* token;
};

void run_agent(const AgentArgs& a) {
  Shared& sh = *a.shared;
  const int n = a.o->agents;
  std::shared_ptr<collectives::Store> store;
  std::unique_ptr<AgentRendezvous> agent;
  auto step = [&](Phase p, const std::function<void()>& body) {
    sh.sync.arrive_and_wait();  // every agent starts the phase together
    const int64_t before = agent ? agent->operations() : 0;
    try {
      body();
    } catch (const std::exception& e) {
      sh.error("agent " + std::to_string(a.index) + " in " + kPhaseNames[p] + ": " + e.what());
    }
    sh.ended(p);
    sh.ops[p] += (agent ? agent->operations() : 0) - before;
  };
  step(kConnect, [&] {
    collectives::TcpStoreOptions co;
    co.port = a.port;
    co.token = *a.token;
    co.role = collectives::StoreRole::kAgent;
    co.timeout = 120s;
    store = std::make_shared<collectives::PrefixStore>(
        "launch", std::make_shared<collectives::TcpStore>(std::move(co)));
    sh.ops[kConnect] += 1;  // the handshake
    RendezvousSettings rs;
    rs.min_nodes = rs.max_nodes = n;
    rs.node_rank = a.index;
    rs.host = a.index == 0;
    rs.timeout_s = 120;
    rs.heartbeat_s = a.o->heartbeat_s;
    rs.failure_poll_s = a.o->failure_poll_s;
    rs.heartbeat_timeout_s = 120;
    rs.label = "agent" + std::to_string(a.index);
    agent = std::make_unique<AgentRendezvous>(store, rs);
  });
  step(kRendezvous, [&] {
    if (!agent) return;
    const auto m = agent->join(0);
    if (!m || m->nnodes != n || m->world != n || m->rank_offset != a.index)
      sh.error("agent " + std::to_string(a.index) + " got a wrong place in the job");
  });
  step(kHeartbeats, [&] {
    if (!agent) return;
    const auto end = sh.start[kHeartbeats] + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(a.o->beat_seconds));
    while (Clock::now() < end) {
      if (const std::string what = agent->check(); !what.empty())
        sh.error("agent " + std::to_string(a.index) + " saw a failure nobody posted: " + what);
      std::this_thread::sleep_for(100ms);  // cohort launch's --monitor-interval
    }
  });
  step(kFailure, [&] {
    if (!agent) return;
    if (a.index == n - 1) {
      agent->post_failure("a failure posted by the benchmark");
      return;
    }
    const auto give_up = Clock::now() + 120s;
    while (agent->check().empty()) {
      if (Clock::now() > give_up) {
        sh.error("agent " + std::to_string(a.index) + " never saw the failure");
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
  });
  step(kLeave, [&] {
    if (agent) agent->leave();
  });
  sh.sync.arrive_and_wait();
}

void* agent_thread(void* p) {
  run_agent(*static_cast<AgentArgs*>(p));
  return nullptr;
}

}  // namespace

int bench_rendezvous(const BenchRendezvousOptions& o) {
  if (o.agents < 2 || o.agents > 65536)
    COHORT_THROW(ConfigError, "--agents must be from 2 to 65536, got ", o.agents);
  // Four descriptors per agent here: its socket and its client's event loop (epoll, eventfd,
  // timerfd); a real agent is a process of its own. The server, in a child, holds the other ends.
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  const rlim_t need = static_cast<rlim_t>(4 * o.agents + 256);
  if (rl.rlim_cur < need) {
    rl.rlim_cur = need;
    rl.rlim_max = std::max(rl.rlim_max, need);  // allowed to root (CAP_SYS_RESOURCE)
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      ::getrlimit(RLIMIT_NOFILE, &rl);
      rl.rlim_cur = std::min(need, rl.rlim_max);
      ::setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need)
      COHORT_THROW(ConfigError, o.agents, " agents need ", need,
                   " file descriptors; this process may open only ", rl.rlim_cur, " (ulimit -n)");
  }
  const auto token = collectives::JobToken::generate();
  // Before any thread starts: the server forks.
  ServerProcess server = start_server(token, rendezvous_store_limits(o.agents, 1 + 4));
  struct StopServer {
    ServerProcess& s;
    ~StopServer() {
      ::close(s.stop_fd);
      ::waitpid(s.pid, nullptr, 0);
    }
  } stop_server{server};

  Shared shared(o.agents + 1);  // the agents and this thread, which waits at every barrier
  std::vector<AgentArgs> args;
  args.reserve(static_cast<size_t>(o.agents));
  for (int i = 0; i < o.agents; ++i) args.push_back({&shared, &o, i, server.port, &token});
  std::vector<pthread_t> threads(static_cast<size_t>(o.agents));
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 << 10);  // a client needs little; 4096 of 8 MB is too much
  for (int i = 0; i < o.agents; ++i)
    if (pthread_create(&threads[static_cast<size_t>(i)], &attr, agent_thread,
                       &args[static_cast<size_t>(i)]) != 0)
      COHORT_THROW(Error, "bench rendezvous: cannot start agent thread ", i);
  pthread_attr_destroy(&attr);
  for (int p = 0; p <= kPhases; ++p) shared.sync.arrive_and_wait();
  for (pthread_t t : threads) pthread_join(t, nullptr);

  std::printf(
      "# cohort bench rendezvous: %d agents (threads, a connection each) and one store with "
      "cohort launch's limits for %d nodes; heartbeat every %g s, failures looked for every %g "
      "s, supervision every 0.1 s\n",
      o.agents, o.agents, o.heartbeat_s, o.failure_poll_s);
  std::printf("%-12s %10s %12s %12s %14s\n", "phase", "seconds", "store ops", "ops/agent",
              "store ops/s");
  for (int p = 0; p < kPhases; ++p) {
    const double s = static_cast<double>(shared.last[static_cast<size_t>(p)].load()) / 1e9;
    const auto ops = static_cast<double>(shared.ops[p].load());
    std::printf("%-12s %10.3f %12.0f %12.2f %14.0f\n", kPhaseNames[p], s, ops, ops / o.agents,
                s > 0 ? ops / s : 0.0);
  }
  std::printf("failure broadcast: the last agent saw it %.3f s after it was posted\n",
              static_cast<double>(shared.last[kFailure].load()) / 1e9);
  std::printf("store process: %ld MiB resident\n", rss_kib(server.pid) / 1024);
  if (shared.errors.load() > 0) {
    std::fprintf(stderr, "bench rendezvous: %d error(s); the first: %s\n", shared.errors.load(),
                 shared.first_error.c_str());
    return 1;
  }
  return 0;
}

}  // namespace cohort::launcher
