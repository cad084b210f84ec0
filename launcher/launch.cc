#include "launcher/launch.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "collectives/flight_recorder.h"
#include "collectives/shared_memory.h"
#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "launcher/cpu_binding.h"
#include "launcher/rendezvous.h"
#include "launcher/worker_env.h"
#include "launcher/worker_process.h"
#include "parameter_server/auth.h"
#include "trainer/stop.h"

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
  struct sigaction old_int_ {
  }, old_term_{};
};

// One id for every attempt of this launch (a restarted worker continues the same run), and a
// different one for any other launch, even one that reuses this pid.
const std::string& default_run_id() {
  static const std::string id = collectives::to_hex(collectives::random_bytes(8));
  return id;
}

// What the agents share through the store (keys under "launch/"): each node's worker count, a
// heartbeat per node, and per attempt the first failure and which nodes have finished.
// Whether `rank` prints to the console under --ranks-filter ("" shows every rank).
bool shown_on_console(const std::string& filter, int rank) {
  if (filter.empty()) return true;
  size_t start = 0;
  while (start <= filter.size()) {
    const size_t comma = std::min(filter.find(',', start), filter.size());
    if (filter.substr(start, comma - start) == std::to_string(rank)) return true;
    start = comma + 1;
  }
  return false;
}

void check_ranks_filter(const std::string& filter) {
  for (char c : filter)
    if (c != ',' && (c < '0' || c > '9'))
      COHORT_THROW(ConfigError, "--ranks-filter '", filter,
                   "' is not a comma-separated list of ranks such as 0,3");
}

StreamRoute route(bool shown, int redirect_bits, int tee_bits, int bit) {
  StreamRoute r;
  const bool tee = tee_bits & bit;
  r.file = tee || (redirect_bits & bit);
  r.console = shown && (!r.file || tee);
  return r;
}

// "rank 3" or "parameter server 1", for messages.
std::string who(const WorkerSpec& spec) {
  return (spec.server ? "parameter server " : "rank ") + std::to_string(spec.rank);
}

void print_lost(const WorkerProcess& w) {
  std::fprintf(stderr,
               "cohort launch: worker rank %d (pid %d) %s; parameter-server training goes on "
               "without it\n",
               w.spec().rank, static_cast<int>(w.pid()), w.describe_status().c_str());
  for (const auto& line : w.last_lines())
    std::fprintf(stderr, "  %s%s\n", w.spec().prefix.c_str(), line.c_str());
  std::fflush(stderr);
}

struct RoundResult {
  int signal = 0;                         // the launcher was told to stop
  const WorkerProcess* failed = nullptr;  // the first worker that failed on this node
  std::string remote;                     // or what failed elsewhere
  bool membership = false;                // the workers stopped to let nodes join
};

// What an agent posts as the round's end when its workers stopped to let waiting nodes join.
constexpr const char* kMembershipNote = "membership: nodes are joining";

// Each local rank's CPUs. A node whose NVIDIA GPUs number at least its ranks runs a rank per GPU
// (device: auto does), so rank r is placed near GPU r unless CUDA_VISIBLE_DEVICES renumbers them.
void plan_cpu_binding(LaunchOptions& o) {
  const CpuBind mode = parse_cpu_bind(o.cpu_bind);
  const Topology topology = read_topology();
  o.gpu_placed = mode == CpuBind::kCores && !std::getenv("CUDA_VISIBLE_DEVICES") &&
                 static_cast<int>(topology.gpu_cpus.size()) >= o.nproc_per_node;
  o.binding = plan_binding(mode, allowed_cpus(), topology, o.nproc_per_node, o.gpu_placed);
}

class Round {
 public:
  Round(const LaunchOptions& o, Rendezvous& rz, int restart, const std::string& ps_secret)
      : o_(o), rz_(rz) {
    const int n = o.nproc_per_node;
    const std::vector<int> redirects = parse_stream_spec("--redirects", o.redirects, n);
    const std::vector<int> tees = parse_stream_spec("--tee", o.tee, n);
    const std::string run_id = o.run_id.empty() ? default_run_id() : o.run_id;
    const std::vector<std::string> command = worker_command(o);
    const bool python = command[0] == "python3";
    const std::string master_port = rz.master_port();
    const std::string node = std::to_string(rz.node_rank()), port = std::to_string(rz.port());
    // Ranks were placed near GPUs in PCI bus order; CUDA numbers them so only when told.
    const bool gpu_order = o.gpu_placed && !std::getenv("CUDA_DEVICE_ORDER");
    for (int r = 0; r < n; ++r) {
      WorkerSpec spec;
      spec.rank = rz.rank_offset() + r;
      spec.local_rank = r;
      spec.argv = command;
      spec.prefix = "[" + node + "/" + std::to_string(spec.rank) + "] ";
      const bool shown = shown_on_console(o.ranks_filter, spec.rank);
      const int redirect = redirects[static_cast<size_t>(r)], tee = tees[static_cast<size_t>(r)];
      spec.out = route(shown, redirect, tee, 1);
      spec.err = route(shown, redirect, tee, 2);
      if (spec.out.file || spec.err.file)
        spec.log_path =
            (std::filesystem::path(o.log_dir) / ("rank_" + std::to_string(spec.rank) + ".log"))
                .string();
      const std::string rank = std::to_string(spec.rank), local = std::to_string(r);
      const std::string world = std::to_string(rz.world_size()), local_world = std::to_string(n);
      spec.env = {{"COHORT_RANK", rank},
                  {"COHORT_LOCAL_RANK", local},
                  {"COHORT_WORLD_SIZE", world},
                  {"COHORT_LOCAL_WORLD_SIZE", local_world},
                  {"COHORT_NODE_RANK", node},
                  {"COHORT_STORE", rz.host() + ":" + port},
                  {"COHORT_TOKEN", rz.worker_token()},
                  // Each attempt gets a fresh namespace in the store: keys of a failed attempt
                  // must not meet the next one.
                  {"COHORT_STORE_PREFIX", "attempt" + std::to_string(restart)},
                  {"COHORT_RESTART_COUNT", std::to_string(restart)},
                  {"COHORT_RUN_ID", run_id},
                  // torchrun's names, for programs that read those.
                  {"RANK", rank},
                  {"LOCAL_RANK", local},
                  {"WORLD_SIZE", world},
                  {"LOCAL_WORLD_SIZE", local_world},
                  {"GROUP_RANK", node},
                  {"GROUP_WORLD_SIZE", std::to_string(rz.nnodes())},
                  {"ROLE_NAME", "default"},
                  {"ROLE_RANK", rank},
                  {"ROLE_WORLD_SIZE", world},
                  {"MASTER_ADDR", rz.host()},
                  {"MASTER_PORT", master_port},
                  // Rank 0 hosts PyTorch's store itself; the agent's is not PyTorch's.
                  {"TORCHELASTIC_USE_AGENT_STORE", "False"},
                  {"TORCHELASTIC_RESTART_COUNT", std::to_string(restart)},
                  {"TORCHELASTIC_MAX_RESTARTS", std::to_string(o.max_restarts)},
                  {"TORCHELASTIC_RUN_ID", run_id}};
      if (!o.flight_note.empty()) spec.env["COHORT_FLIGHT_RECORDER_NOTE"] = o.flight_note;
      if (o.heal) spec.env["COHORT_HEAL"] = "1";
      spec.cpus = o.binding.empty() ? std::vector<int>{} : o.binding[static_cast<size_t>(r)];
      // Also "none": a worker must not take a cgroup's or taskset's narrow CPU set for a binding.
      spec.env["COHORT_CPU_BIND"] = spec.cpus.empty() ? "none" : o.cpu_bind;
      if (gpu_order) spec.env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID";
      // torchrun's default for Python workers is one thread each; the CPUs of their binding (or
      // an equal share of the cores) is what they would choose for themselves.
      if (python && !std::getenv("OMP_NUM_THREADS"))
        spec.env["OMP_NUM_THREADS"] = std::to_string(
            !spec.cpus.empty()
                ? static_cast<unsigned>(spec.cpus.size())
                : std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(n)));
      // An elastic job: the world size data.batch_size is meant for (the first round's), so that
      // the trainer keeps the global batch at another world size.
      if (rz.elastic())
        spec.env["COHORT_BATCH_WORLD"] = std::to_string(rz.membership().batch_world);
      if (o.ps_servers > 0) {
        spec.env["COHORT_ROLE"] = "worker";
        spec.env["COHORT_PS_SERVERS"] = std::to_string(o.ps_servers * rz.nnodes());
        spec.env["COHORT_PS_SECRET"] = ps_secret;
      }
      workers_.push_back(std::make_unique<WorkerProcess>(std::move(spec)));
    }
    // Servers first in line for nothing: workers find them through the store, waiting if need be.
    for (int i = 0; i < o.ps_servers; ++i) {
      WorkerSpec spec;
      spec.server = true;
      spec.rank = rz.node_rank() * o.ps_servers + i;
      spec.argv = command;
      spec.prefix = "[" + node + "/ps" + std::to_string(spec.rank) + "] ";
      // Servers' streams go where local rank 0's go.
      spec.out = route(true, redirects[0], tees[0], 1);
      spec.err = route(true, redirects[0], tees[0], 2);
      if (spec.out.file || spec.err.file)
        spec.log_path =
            (std::filesystem::path(o.log_dir) / ("ps_" + std::to_string(spec.rank) + ".log"))
                .string();
      spec.env = {{"COHORT_ROLE", "server"},
                  {"COHORT_PS_SERVER_RANK", std::to_string(spec.rank)},
                  {"COHORT_PS_SERVERS", std::to_string(o.ps_servers * rz.nnodes())},
                  {"COHORT_PS_SECRET", ps_secret},
                  {"COHORT_PS_BIND", rz.local_address()},
                  {"COHORT_WORLD_SIZE", std::to_string(rz.world_size())},
                  {"COHORT_NODE_RANK", node},
                  {"COHORT_STORE", rz.host() + ":" + port},
                  {"COHORT_TOKEN", rz.worker_token()},
                  {"COHORT_STORE_PREFIX", "attempt" + std::to_string(restart)},
                  {"COHORT_RESTART_COUNT", "0"},
                  {"COHORT_RUN_ID", run_id}};
      workers_.push_back(std::make_unique<WorkerProcess>(std::move(spec)));
    }
    server_restarts_.assign(workers_.size(), 0);
  }

  RoundResult supervise() {
    RoundResult result;
    auto next_check = Clock::now();
    bool finished_here = false;
    while (true) {
      pump(std::chrono::milliseconds(
          std::max<int64_t>(1, static_cast<int64_t>(o_.monitor_interval_s * 1000))));
      if (const int sig = g_signal.load()) {
        result.signal = sig;
        stop(sig);
        return result;
      }
      bool all_done = true;
      for (size_t i = 0; i < workers_.size(); ++i) {
        auto& w = workers_[i];
        if (!w->poll_exit()) {
          if (!w->spec().server) all_done = false;
        } else if (w->spec().server) {
          if (!restart_server(i) && !result.failed) result.failed = w.get();
        } else if (heal_in_place(i)) {
          // The others heal without it; its replacement joins them.
        } else if (w->exit_code() != 0 && o_.ps_servers > 0 && w->spec().rank != 0) {
          // Parameter-server workers are independent: only the chief's failure ends the job.
          if (!result.failed) note_lost_worker(*w);
        } else if (w->exit_code() != 0 && (!result.failed || first_cause(*w, *result.failed))) {
          result.failed = w.get();
        }
      }
      if (result.failed) {
        // Workers that stopped to let nodes join: every node meets again, nothing failed.
        if (result.failed->exit_code() == trainer::kExitMembership && rz_.elastic())
          result.membership = true;
        rz_.post_failure(result.membership ? std::string(kMembershipNote)
                                           : describe_failure(*result.failed));
        ask_for_flight_dumps(*result.failed);
        stop(SIGTERM);
        return result;
      }
      if (all_done && !finished_here) {
        finish_output(std::chrono::seconds(2));
        rz_.post_done();
        finished_here = true;
        if (rz_.all_done()) return finish(result);
      }
      if (Clock::now() >= next_check) {
        next_check = Clock::now() + std::chrono::milliseconds(std::max<int64_t>(
                                        1, static_cast<int64_t>(o_.monitor_interval_s * 1000)));
        // Another node's failure stops this node's workers too; a finished node waits for the
        // others (node 0 hosts the store they need).
        result.remote = rz_.check();
        if (!result.remote.empty()) {
          result.membership = result.remote == kMembershipNote;
          stop(SIGTERM);
          return result;
        }
        if (finished_here && rz_.all_done()) return finish(result);
      }
    }
  }

  // One line for the summary, with the worker's last lines, as the other nodes will print it.
  std::string describe_failure(const WorkerProcess& w) const {
    std::string text = who(w.spec()) + " (node " + std::to_string(rz_.node_rank()) + ", pid " +
                       std::to_string(w.pid()) + ") " + w.describe_status();
    if (!w.last_lines().empty()) {
      text += "; its last lines:";
      for (const auto& line : w.last_lines()) text += "\n    " + w.spec().prefix + line;
    }
    return text;
  }

 private:
  // The workers are done: parameter servers (if any) write their last checkpoints and stop.
  RoundResult finish(RoundResult r) {
    bool servers = false;
    for (auto& w : workers_) servers = servers || (w->spec().server && !w->exited());
    if (servers) stop(SIGTERM);
    if (!lost_.empty())
      std::fprintf(stderr,
                   "cohort launch: parameter-server training finished without worker(s) %s\n",
                   lost_.c_str());
    return r;
  }

  void note_lost_worker(const WorkerProcess& w) {
    const std::string rank = std::to_string(w.spec().rank);
    if (std::find(lost_ranks_.begin(), lost_ranks_.end(), w.spec().rank) != lost_ranks_.end())
      return;
    lost_ranks_.push_back(w.spec().rank);
    lost_ += (lost_.empty() ? "" : ", ") + rank;
    print_lost(w);
  }

  // Of two ranks found dead in the same look, whether `a` rather than `b` is the one to name: a
  // rank killed by a signal over one that exited with a code, which is most likely a rank that
  // saw its peer die (collectives watch their shared-memory peers' pids, and notice a dead one
  // before this loop looks again).
  static bool first_cause(const WorkerProcess& a, const WorkerProcess& b) {
    return !b.spec().server && WIFSIGNALED(a.status()) && !WIFSIGNALED(b.status());
  }

  // --heal: a worker other than rank 0 killed by a signal (a crash, the OOM killer, a kill) leaves
  // the others to heal in place (trainer/heal.h) and a replacement starts in its place with
  // COHORT_HEAL_JOIN, which joins them. A worker that exited with a code failed by itself (every
  // rank would), and rank 0 holds the run directory: those take the restart path.
  bool heal_in_place(size_t i) {
    const WorkerProcess& w = *workers_[i];
    if (!o_.heal || w.spec().server || w.spec().rank == 0 || !WIFSIGNALED(w.status()) ||
        heals_ >= o_.max_restarts)
      return false;
    ++heals_;
    std::fprintf(stderr,
                 "cohort launch: rank %d (node %d, pid %d) %s; the other ranks heal in place and "
                 "a replacement joins them (heal %d of %d)\n",
                 w.spec().rank, rz_.node_rank(), static_cast<int>(w.pid()),
                 w.describe_status().c_str(), heals_, o_.max_restarts);
    std::fflush(stderr);
    rz_.announce_replacement();
    WorkerSpec spec = w.spec();
    spec.env["COHORT_HEAL_JOIN"] = "1";
    // Not the job's first attempt for drills (COHORT_KILL_AT_STEP) either.
    spec.env["COHORT_RESTART_COUNT"] = spec.env["TORCHELASTIC_RESTART_COUNT"] =
        std::to_string(rz_.membership().round + heals_);
    workers_[i] = std::make_unique<WorkerProcess>(std::move(spec));
    return true;
  }

  // A parameter server that exited while the workers need it starts again (it resumes from its
  // checkpoint; the workers reconnect). False when it has no restarts left.
  bool restart_server(size_t i) {
    const WorkerProcess& w = *workers_[i];
    if (server_restarts_[i] >= o_.max_restarts) {
      return false;
    }
    ++server_restarts_[i];
    std::fprintf(stderr,
                 "cohort launch: parameter server %d (node %d, pid %d) %s; restarting it "
                 "(restart %d of %d)\n",
                 w.spec().rank, rz_.node_rank(), static_cast<int>(w.pid()),
                 w.describe_status().c_str(), server_restarts_[i], o_.max_restarts);
    std::fflush(stderr);
    WorkerSpec spec = w.spec();
    spec.env["COHORT_RESTART_COUNT"] = std::to_string(server_restarts_[i]);
    workers_[i] = std::make_unique<WorkerProcess>(std::move(spec));
    return true;
  }

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

  // A worker that timed out or lost a peer (exit code 4) ends a job whose other ranks are still
  // where they were: before stopping them, ask each for its flight-recorder dump (SIGUSR2), so
  // that the diagnosis has every rank, not only those that failed by themselves. Only workers
  // that said where they dump (cohort's trainer, which handles the signal) are asked, and never
  // parameter servers, which checkpoint when they stop.
  void ask_for_flight_dumps(const WorkerProcess& failed) {
    if (failed.exit_code() != 4 || o_.flight_note.empty()) return;
    std::ifstream note(o_.flight_note);
    std::string dir;
    std::error_code ec;
    if (!std::getline(note, dir) || dir.empty() || !std::filesystem::is_directory(dir, ec)) return;
    int asked = 0;
    for (auto& w : workers_)
      if (!w->spec().server && !w->poll_exit()) {
        w->signal(SIGUSR2);
        ++asked;
      }
    if (asked == 0) return;
    const auto until = Clock::now() + std::chrono::seconds(1);
    while (Clock::now() < until) {
      int dumps = 0;
      for (const auto& f : std::filesystem::directory_iterator(dir, ec))
        dumps += f.path().extension() == ".json";
      if (dumps >= o_.nproc_per_node) break;
      pump(std::chrono::milliseconds(20));
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
  Rendezvous& rz_;
  std::vector<std::unique_ptr<WorkerProcess>> workers_;  // and parameter servers, after them
  std::vector<int> server_restarts_;
  int heals_ = 0;                // replacements started (--heal)
  std::vector<int> lost_ranks_;  // parameter-server workers that failed; the job went on
  std::string lost_;
};

void print_failure(const WorkerProcess& w, int node, const char* what_next) {
  std::string text = "cohort launch: " + who(w.spec()) + " (node " + std::to_string(node) +
                     ", pid " + std::to_string(w.pid()) + ") " + w.describe_status() + what_next +
                     "\n";
  if (!w.last_lines().empty()) {
    text += "cohort launch: last lines of " + who(w.spec()) + "'s output:\n";
    for (const auto& line : w.last_lines()) text += "  " + w.spec().prefix + line + "\n";
  }
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace

std::vector<int> parse_stream_spec(const std::string& option, const std::string& spec, int nproc) {
  std::vector<int> bits(static_cast<size_t>(std::max(nproc, 0)), 0);
  if (spec.empty()) return bits;
  const auto fail = [&](const std::string& why, bool hint = true) {
    COHORT_THROW(ConfigError, option, " '", spec, "' ", why,
                 hint ? "; give 0 (neither), 1 (stdout), 2 (stderr) or 3 (both), for every local "
                        "rank or per local rank as in 0:1,1:3"
                      : "");
  };
  const auto stream_bits = [&](const std::string& v) {
    if (v.size() != 1 || v[0] < '0' || v[0] > '3') fail("has '" + v + "' for the streams");
    return v[0] - '0';
  };
  if (spec.find(':') == std::string::npos) {
    std::fill(bits.begin(), bits.end(), stream_bits(spec));
    return bits;
  }
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, comma - start);
    const size_t colon = item.find(':');
    const std::string rank = item.substr(0, colon);
    if (colon == std::string::npos || rank.empty() ||
        rank.find_first_not_of("0123456789") != std::string::npos || rank.size() > 6)
      fail("has '" + item + "' where LOCAL_RANK:STREAMS belongs");
    const int local = std::stoi(rank);
    if (local >= nproc)
      fail("names local rank " + rank + " but --nproc-per-node is " + std::to_string(nproc), false);
    bits[static_cast<size_t>(local)] = stream_bits(item.substr(colon + 1));
    start = comma + 1;
  }
  return bits;
}

std::vector<std::string> worker_command(const LaunchOptions& o) {
  if (o.program.empty())
    COHORT_THROW(ConfigError,
                 "cohort launch needs a program: cohort launch [options] PROGRAM [ARGS...], or "
                 "-- PROGRAM ARGS... (a .py script runs with python3; -m MODULE runs a module)");
  std::vector<std::string> argv = o.program;
  const std::string& first = argv[0];
  if (o.module) {
    argv.insert(argv.begin(), {"python3", "-m"});
  } else if (!o.no_python && first.size() > 3 && first.compare(first.size() - 3, 3, ".py") == 0) {
    argv.insert(argv.begin(), "python3");
  }
  return argv;
}

uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) COHORT_THROW(DistributedError, "cohort launch: cannot open a socket to find a port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    COHORT_THROW(DistributedError, "cohort launch: cannot find a free port");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

int launch(const LaunchOptions& options) {
  LaunchOptions o = options;
  if (o.nnodes < 1 || o.node_rank < 0 || o.node_rank >= o.nnodes)
    COHORT_THROW(ConfigError, "--node-rank ", o.node_rank, " is outside --nnodes ", o.nnodes);
  if (o.nnodes > 1 && o.rdzv_endpoint.empty())
    COHORT_THROW(ConfigError, "--nnodes ", o.nnodes, " needs --rdzv-endpoint HOST:PORT (node 0's)");
  if (o.min_nnodes > 0 && o.ps_servers > 0)
    COHORT_THROW(ConfigError,
                 "--nnodes MIN:MAX with --ps-servers: an elastic job's parameter servers would "
                 "come and go with their nodes; give a fixed --nnodes for parameter-server "
                 "training");
  if (o.rdzv_last_call_s < 0 || o.heartbeat_timeout_s <= 0)
    COHORT_THROW(ConfigError,
                 "--rdzv-last-call must not be negative and --heartbeat-timeout must be positive");
  if (o.nproc_per_node < 1)
    COHORT_THROW(ConfigError, "--nproc-per-node must be at least 1, got ", o.nproc_per_node);
  if (o.max_restarts < 0)
    COHORT_THROW(ConfigError, "--max-restarts must be 0 or more, got ", o.max_restarts);
  if (o.monitor_interval_s <= 0 || o.grace_period_s < 0)
    COHORT_THROW(ConfigError,
                 "--monitor-interval must be positive and --grace-period not negative");
  check_ranks_filter(o.ranks_filter);
  if (o.program.empty())
    COHORT_THROW(ConfigError,
                 "no program to launch; usage: cohort launch [options] -- PROGRAM [ARGS...]");
  parse_stream_spec("--redirects", o.redirects, o.nproc_per_node);
  parse_stream_spec("--tee", o.tee, o.nproc_per_node);
  // --log-dir alone sends every stream there (as in earlier releases).
  if (!o.log_dir.empty() && o.redirects.empty()) o.redirects = "3";
  if (o.log_dir.empty() && (!o.redirects.empty() || !o.tee.empty())) {
    // As torchrun: streams sent to files without a directory for them go to a new one.
    std::string tmpl = (std::filesystem::temp_directory_path() / "cohort-logs-XXXXXX").string();
    if (!::mkdtemp(tmpl.data()))
      COHORT_THROW(ConfigError,
                   "cohort launch: cannot create a directory for --redirects/--tee "
                   "logs under ",
                   std::filesystem::temp_directory_path().string(), "; give --log-dir");
    o.log_dir = tmpl;
    std::fprintf(stderr, "cohort launch: worker logs in %s\n", o.log_dir.c_str());
  }
  if (!o.log_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.log_dir, ec);
    if (ec)
      COHORT_THROW(ConfigError, "--log-dir ", o.log_dir, " cannot be created: ", ec.message());
  }
  // Meeting the other nodes comes before the signal handlers: a Ctrl-C while waiting for them
  // ends the launcher at once (no worker runs yet) instead of waiting out --rdzv-timeout.
  if (o.ps_servers < 0)
    COHORT_THROW(ConfigError, "--ps-servers must be 0 or more, got ", o.ps_servers);
  plan_cpu_binding(o);
  // Where the workers say they dump their flight recorders (for the diagnosis of a failure).
  // (mkdtemp fills in the XXXXXX; without a usable temporary directory there is no diagnosis.)
  std::error_code tmp_ec;
  const auto tmp = std::filesystem::temp_directory_path(tmp_ec);
  std::string note_dir = tmp_ec ? "" : (tmp / "cohort-launch-XXXXXX").string();
  if (!note_dir.empty() && ::mkdtemp(note_dir.data()))
    o.flight_note = note_dir + "/flight_recorder";
  struct NoteCleanup {
    std::string dir;
    ~NoteCleanup() {
      std::error_code ec;
      if (!dir.empty() && dir.find("cohort-launch-") != std::string::npos)
        std::filesystem::remove_all(dir, ec);
    }
  } note_cleanup{o.flight_note.empty() ? "" : note_dir};
  Rendezvous rz(o);
  const std::string ps_secret = o.ps_servers > 0 ? rz.ps_secret() : "";
  // The job is over for this agent: the others (node 0 waits for them) and any node still
  // waiting to join an elastic job are told.
  auto leave = [&](int code) {
    rz.leave();
    if (rz.node_rank() == 0) rz.post_finished();
    return code;
  };
  int restarts = 0;  // failures restarted so far; a change of membership is not one
  for (int round = 0;; ++round) {
    // Meeting the other nodes comes before the signal handlers: a Ctrl-C while waiting for them
    // ends the launcher at once (no worker runs then).
    if (!rz.join(round)) {
      std::fprintf(stderr,
                   "cohort launch: node %d arrived while the job runs; it joins when the "
                   "workers next make room (at their next checkpoint)\n",
                   o.node_rank);
      std::fflush(stderr);
      if (!rz.await_round(round + 1)) {
        std::fprintf(stderr, "cohort launch: the job finished before this node could join\n");
        return 0;
      }
      continue;
    }
    if (rz.elastic())
      std::fprintf(stderr, "cohort launch: round %d: node %d of %d, ranks %d-%d of %d\n", round,
                   rz.node_rank(), rz.nnodes(), rz.rank_offset(),
                   rz.rank_offset() + o.nproc_per_node - 1, rz.world_size());
    RoundResult r;
    {
      SignalScope signals;
      // Declared before the round, so it runs after the round's workers are gone: a worker
      // killed between creating a shared-memory segment and unlinking it leaves it to us.
      struct OrphanSweep {
        ~OrphanSweep() { collectives::remove_orphaned_segments(); }
      } sweep;
      Round workers(o, rz, round, ps_secret);
      r = workers.supervise();
      if (r.signal) {
        std::fprintf(stderr, "cohort launch: stopped by %s; workers stopped\n",
                     r.signal == SIGINT ? "SIGINT" : "SIGTERM");
        return leave(128 + r.signal);
      }
      if (r.membership) {
        std::fprintf(stderr,
                     "cohort launch: node %d: the workers made room for joining nodes; the nodes "
                     "meet again\n",
                     rz.node_rank());
        continue;
      }
      if (!r.failed && r.remote.empty()) return leave(0);
      const bool restarting = restarts < o.max_restarts;
      const std::string next =
          restarting
              ? (rz.elastic() ? "; the nodes meet again and restart (restart "
                              : "; restarting all " + std::to_string(rz.world_size()) +
                                    " workers (restart ") +
                    std::to_string(restarts + 1) + " of " + std::to_string(o.max_restarts) + ")"
              : (restarts > 0 ? "; no restarts left" : "");
      if (r.failed) {
        print_failure(*r.failed, rz.node_rank(), next.c_str());
        // A collective that timed out or a peer that failed (exit code 4): say where every rank
        // was, from their flight-recorder dumps.
        if (r.failed->exit_code() == 4 && !o.flight_note.empty()) {
          const std::string d = collectives::diagnose_from_note(o.flight_note, o.nproc_per_node,
                                                                std::chrono::seconds(3));
          if (!d.empty()) std::fprintf(stderr, "cohort launch: diagnosis: %s\n", d.c_str());
          std::remove(o.flight_note.c_str());
        }
        if (!restarting) return leave(r.failed->exit_code());
      } else {
        std::fprintf(stderr, "cohort launch: node %d stopped its workers: %s%s\n", rz.node_rank(),
                     r.remote.c_str(), next.c_str());
        if (!restarting) return leave(1);
      }
      ++restarts;
    }
  }
}

}  // namespace cohort::launcher
