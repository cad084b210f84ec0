#include "launcher/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "launcher/worker_process.h"

namespace cohort::launcher {
namespace {

using Clock = std::chrono::steady_clock;

// SIGINT and SIGTERM become a byte on a pipe that the supervision loop polls with the workers'
// output, so a signal is handled between two reads, never inside one.
std::atomic<int> g_signal{0};
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  g_signal.store(sig);
  const char c = 1;
  (void)!::write(g_signal_pipe[1], &c, 1);
}

class SignalScope {
 public:
  SignalScope() {
    if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
      COHORT_THROW(Error, "cohort launch: cannot create a pipe for signals");
    g_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalScope() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::close(g_signal_pipe[0]);
    ::close(g_signal_pipe[1]);
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

struct RoundResult {
  int signal = 0;                           // the launcher was told to stop
  const WorkerProcess* failed = nullptr;    // the first worker that failed
};

class Round {
 public:
  Round(const LaunchOptions& o, const std::string& store_host, uint16_t port, int restart)
      : o_(o) {
    const int n = o.nproc_per_node;
    const std::string run_id = o.run_id.empty() ? std::to_string(::getpid()) : o.run_id;
    for (int r = 0; r < n; ++r) {
      WorkerSpec spec;
      spec.rank = spec.local_rank = r;
      spec.argv = o.program;
      spec.prefix = "[0/" + std::to_string(r) + "] ";
      spec.tee = o.tee;
      if (!o.log_dir.empty())
        spec.log_path = (std::filesystem::path(o.log_dir) / ("rank_" + std::to_string(r) + ".log"))
                            .string();
      const std::string rank = std::to_string(r), world = std::to_string(n);
      spec.env = {{"COHORT_RANK", rank},
                  {"COHORT_LOCAL_RANK", rank},
                  {"COHORT_WORLD_SIZE", world},
                  {"COHORT_LOCAL_WORLD_SIZE", world},
                  {"COHORT_NODE_RANK", "0"},
                  {"COHORT_STORE", store_host + ":" + std::to_string(port)},
                  // Each attempt gets a fresh namespace in the store: keys of a failed attempt
                  // must not meet the next one.
                  {"COHORT_STORE_PREFIX", "attempt" + std::to_string(restart)},
                  {"COHORT_RESTART_COUNT", std::to_string(restart)},
                  {"COHORT_RUN_ID", run_id},
                  // torchrun's names, for programs that read those.
                  {"RANK", rank},
                  {"LOCAL_RANK", rank},
                  {"WORLD_SIZE", world},
                  {"LOCAL_WORLD_SIZE", world},
                  {"GROUP_RANK", "0"},
                  {"MASTER_ADDR", store_host},
                  {"MASTER_PORT", std::to_string(port)},
                  {"TORCHELASTIC_RESTART_COUNT", std::to_string(restart)}};
      workers_.push_back(std::make_unique<WorkerProcess>(std::move(spec)));
    }
  }

  RoundResult supervise() {
    RoundResult result;
    while (true) {
      pump(std::chrono::milliseconds(
          std::max<int64_t>(1, static_cast<int64_t>(o_.monitor_interval_s * 1000))));
      if (const int sig = g_signal.load()) {
        result.signal = sig;
        stop(sig);
        return result;
      }
      bool all_done = true;
      for (auto& w : workers_) {
        if (!w->poll_exit()) {
          all_done = false;
        } else if (w->exit_code() != 0 && !result.failed) {
          result.failed = w.get();
        }
      }
      if (result.failed) {
        stop(SIGTERM);
        return result;
      }
      if (all_done) {
        finish_output(std::chrono::seconds(2));
        return result;
      }
    }
  }

 private:
  // Waits up to `timeout` for output (or a signal) and forwards what arrived.
  void pump(std::chrono::milliseconds timeout) {
    std::vector<pollfd> fds;
    std::vector<WorkerProcess*> owner;
    for (auto& w : workers_)
      for (int fd : w->fds()) {
        fds.push_back({fd, POLLIN, 0});
        owner.push_back(w.get());
      }
    fds.push_back({g_signal_pipe[0], POLLIN, 0});
    const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
    if (ready <= 0) return;
    for (size_t i = 0; i + 1 < fds.size(); ++i)
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) owner[i]->drain(fds[i].fd);
    if (fds.back().revents & POLLIN) {
      char buf[16];
      while (::read(g_signal_pipe[0], buf, sizeof buf) > 0) {
      }
    }
  }

  // Forwards the rest of the output, until every pipe is closed or `limit` passes (a grandchild
  // that escaped its group could hold a pipe open).
  void finish_output(Clock::duration limit) {
    const auto end = Clock::now() + limit;
    while (Clock::now() < end) {
      bool open = false;
      for (auto& w : workers_) open = open || !w->fds().empty();
      if (!open) return;
      pump(std::chrono::milliseconds(50));
    }
  }

  // Sends `sig` to every worker still running, then SIGKILL to those still running after the
  // grace period (a second signal to the launcher cuts it short), and reaps them all.
  void stop(int sig) {
    for (auto& w : workers_) w->signal(sig);
    const auto kill_at =
        Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o_.grace_period_s * 1000));
    const int signals_before = g_signal.load();
    g_signal.store(0);
    while (true) {
      bool running = false;
      for (auto& w : workers_) running = running || !w->poll_exit();
      if (!running) break;
      if (Clock::now() >= kill_at || g_signal.load() != 0) {
        for (auto& w : workers_) w->signal(SIGKILL);
      }
      pump(std::chrono::milliseconds(20));
    }
    if (signals_before) g_signal.store(signals_before);
    finish_output(std::chrono::seconds(2));
  }

  const LaunchOptions& o_;
  std::vector<std::unique_ptr<WorkerProcess>> workers_;
};

void print_failure(const WorkerProcess& w, const char* what_next) {
  std::string text = "cohort launch: rank " + std::to_string(w.spec().rank) + " (node 0, pid " +
                     std::to_string(w.pid()) + ") " + w.describe_status() + what_next + "\n";
  if (!w.last_lines().empty()) {
    text += "cohort launch: last lines of rank " + std::to_string(w.spec().rank) + "'s output:\n";
    for (const auto& line : w.last_lines()) text += "  " + w.spec().prefix + line + "\n";
  }
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace

int launch(const LaunchOptions& o) {
  if (o.nproc_per_node < 1)
    COHORT_THROW(ConfigError, "--nproc-per-node must be at least 1, got ", o.nproc_per_node);
  if (o.max_restarts < 0)
    COHORT_THROW(ConfigError, "--max-restarts must be 0 or more, got ", o.max_restarts);
  if (o.monitor_interval_s <= 0 || o.grace_period_s < 0)
    COHORT_THROW(ConfigError, "--monitor-interval must be positive and --grace-period not negative");
  if (o.program.empty())
    COHORT_THROW(ConfigError,
                 "no program to launch; usage: cohort launch [options] -- PROGRAM [ARGS...]");
  if (!o.log_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.log_dir, ec);
    if (ec)
      COHORT_THROW(ConfigError, "--log-dir ", o.log_dir, " cannot be created: ", ec.message());
  }
  // The rendezvous store, on a port the OS picks: two jobs on one machine never collide.
  collectives::TcpStoreServer server(0);
  SignalScope signals;
  for (int restart = 0;; ++restart) {
    RoundResult r;
    const WorkerProcess* failed = nullptr;
    {
      Round round(o, "127.0.0.1", server.port(), restart);
      r = round.supervise();
      if (r.failed) {
        failed = r.failed;
        if (restart < o.max_restarts) {
          const std::string next = "; restarting all " + std::to_string(o.nproc_per_node) +
                                   " workers (restart " + std::to_string(restart + 1) + " of " +
                                   std::to_string(o.max_restarts) + ")";
          print_failure(*failed, next.c_str());
          continue;
        }
        print_failure(*failed, restart > 0 ? "; no restarts left" : "");
        return failed->exit_code();
      }
    }
    if (r.signal) {
      std::fprintf(stderr, "cohort launch: stopped by %s; workers stopped\n",
                   r.signal == SIGINT ? "SIGINT" : "SIGTERM");
      return 128 + r.signal;
    }
    return 0;
  }
}

}  // namespace cohort::launcher
