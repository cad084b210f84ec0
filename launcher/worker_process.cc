#include "launcher/worker_process.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

#include "core/util/error.h"

namespace cohort::launcher {
namespace {

// Lines from all workers go through here, so a line is written whole.
std::mutex& console_mu() {
  static std::mutex mu;
  return mu;
}

void write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a closed console must not stop the launcher
    done += static_cast<size_t>(n);
  }
}

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

}  // namespace

WorkerProcess::WorkerProcess(WorkerSpec spec) : spec_(std::move(spec)) {
  COHORT_CHECK(!spec_.argv.empty(), "no program to run");
  COHORT_CHECK(spec_.log_path.empty() == !(spec_.out.file || spec_.err.file),
               "a worker's log file and the streams routed to it disagree");
  if (!spec_.log_path.empty()) {
    log_fd_ = ::open(spec_.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd_ < 0)
      COHORT_THROW(ConfigError, "cohort launch: cannot write the log file ", spec_.log_path, ": ",
                   std::strerror(errno));
  }
  int out[2] = {-1, -1}, err[2] = {-1, -1}, status[2] = {-1, -1};
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0 ||
      ::pipe2(status, O_CLOEXEC) != 0) {
    const int e = errno;
    for (int fd : {out[0], out[1], err[0], err[1], status[0], status[1], log_fd_}) ::close(fd);
    COHORT_THROW(Error, "cannot create pipes for a worker: ", std::strerror(e));
  }
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    if (!spec_.env.count(kv.substr(0, kv.find('=')))) env_strings.push_back(kv);
  }
  for (const auto& [k, v] : spec_.env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& a : spec_.argv) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  // The binding is applied between fork and exec, so that the worker's first instruction (and
  // every thread it starts) already runs there.
  const int max_cpu =
      spec_.cpus.empty() ? 0 : *std::max_element(spec_.cpus.begin(), spec_.cpus.end());
  const size_t set_size = CPU_ALLOC_SIZE(max_cpu + 1);
  auto free_set = [](cpu_set_t* set) { CPU_FREE(set); };
  std::unique_ptr<cpu_set_t, decltype(free_set)> cpus(CPU_ALLOC(max_cpu + 1), free_set);
  if (cpus) {
    CPU_ZERO_S(set_size, cpus.get());
    for (int c : spec_.cpus) CPU_SET_S(c, set_size, cpus.get());
  }

  pid_ = ::fork();
  if (pid_ < 0) {
    const int e = errno;
    for (int fd : {out[0], out[1], err[0], err[1], status[0], status[1], log_fd_}) ::close(fd);
    COHORT_THROW(Error, "cannot start a worker: fork failed: ", std::strerror(e));
  }
  if (pid_ == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the launcher died before prctl took effect
    // The launcher may block these while it supervises; a worker starts with the defaults.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    // Whatever the launcher (or a library in it) opened without O_CLOEXEC stays behind: a worker
    // starts with its three streams only. The status pipe still reports a failed exec.
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    if (!spec_.cpus.empty() && cpus) ::sched_setaffinity(0, set_size, cpus.get());
    ::execvpe(argv[0], argv.data(), envp.data());
    const int e = errno;
    (void)!::write(status[1], &e, sizeof e);
    ::_exit(127);
  }
  ::setpgid(pid_, pid_);  // also here, so that signal() works before the child ran setpgid
  ::close(out[1]);
  ::close(err[1]);
  ::close(status[1]);
  out_.fd = out[0];
  err_.fd = err[0];
  err_.is_err = true;
  int exec_errno = 0;
  ssize_t n;
  do {
    n = ::read(status[0], &exec_errno, sizeof exec_errno);
  } while (n < 0 && errno == EINTR);
  ::close(status[0]);
  if (n == sizeof exec_errno) {
    ::waitpid(pid_, &status_, 0);
    exited_ = true;
    // The destructor does not run for a constructor that throws.
    for (int fd : {out_.fd, err_.fd, log_fd_}) ::close(fd);
    COHORT_THROW(ConfigError, "cannot run '", spec_.argv[0], "': ", std::strerror(exec_errno));
  }
}

WorkerProcess::~WorkerProcess() {
  if (!exited_ && pid_ > 0) {
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
  for (int fd : {out_.fd, err_.fd, log_fd_})
    if (fd >= 0) ::close(fd);
}

std::vector<int> WorkerProcess::fds() const {
  std::vector<int> v;
  if (out_.fd >= 0) v.push_back(out_.fd);
  if (err_.fd >= 0) v.push_back(err_.fd);
  return v;
}

void WorkerProcess::emit(const Stream& s, const std::string& line) {
  tail_.push_back(line);
  if (tail_.size() > kTailLines) tail_.pop_front();
  const StreamRoute& route = s.is_err ? spec_.err : spec_.out;
  if (route.file) write_all(log_fd_, line + "\n");
  if (route.console) {
    std::lock_guard<std::mutex> lock(console_mu());
    write_all(s.is_err ? STDERR_FILENO : STDOUT_FILENO, spec_.prefix + line + "\n");
  }
}

void WorkerProcess::drain(int fd) {
  Stream& s = fd == out_.fd ? out_ : err_;
  char buf[65536];
  const ssize_t n = ::read(fd, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    if (!s.partial.empty()) emit(s, s.partial);
    s.partial.clear();
    ::close(s.fd);
    s.fd = -1;
    return;
  }
  s.partial.append(buf, static_cast<size_t>(n));
  size_t start = 0, nl;
  while ((nl = s.partial.find('\n', start)) != std::string::npos) {
    emit(s, s.partial.substr(start, nl - start));
    start = nl + 1;
  }
  s.partial.erase(0, start);
}

bool WorkerProcess::poll_exit() {
  if (exited_) return true;
  // Look without reaping first: while the worker is a zombie its pid, which is also its process
  // group's id, cannot be reused, so what it left running in its group can be killed safely.
  siginfo_t info{};
  int r;
  do {
    r = ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT);
  } while (r < 0 && errno == EINTR);
  if (r != 0 || info.si_pid != pid_) return false;
  ::kill(-pid_, SIGKILL);
  while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
  }
  exited_ = true;
  return true;
}

void WorkerProcess::signal(int sig) const {
  if (pid_ > 0 && !exited_) ::kill(-pid_, sig);
}

std::string WorkerProcess::describe_status() const {
  if (WIFSIGNALED(status_)) {
    const int sig = WTERMSIG(status_);
    return "was killed by " + signal_name(sig) + " (" + std::to_string(sig) + ")";
  }
  return "exited with code " + std::to_string(WEXITSTATUS(status_));
}

int WorkerProcess::exit_code() const {
  if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
  return WEXITSTATUS(status_);
}

}  // namespace cohort::launcher
