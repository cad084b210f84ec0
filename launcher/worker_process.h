// One worker process of `cohort launch`: started in a process group of its own (so that signals
// reach everything it starts, and a terminal's Ctrl-C reaches only the launcher, which forwards
// it), killed by the kernel if the launcher dies (PR_SET_PDEATHSIG), its stdout and stderr read
// through pipes line by line so that output is prefixed `[node/rank]` and never mixed within a
// line, with the last lines kept for the failure summary.
#pragma once

#include <sys/types.h>

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cohort::launcher {

// Where one of a worker's streams goes: the console (prefixed), its log file (as written), both
// or neither.
struct StreamRoute {
  bool console = true;
  bool file = false;
};

struct WorkerSpec {
  int rank = 0, local_rank = 0;
  bool server = false;                     // a parameter server (rank is then its server index)
  std::vector<std::string> argv;           // program and arguments; PATH is searched
  std::map<std::string, std::string> env;  // added to the launcher's environment
  std::string prefix;                      // "[0/3] "
  std::string log_path;                    // the file for streams routed there
  StreamRoute out, err;                    // stdout, stderr
  std::vector<int> cpus;                   // the CPUs it may run on; empty: the launcher's
};

class WorkerProcess {
 public:
  // Starts the worker. Throws ConfigError naming the program when it cannot be executed (not
  // found, not executable): the exec failure travels back through a close-on-exec pipe.
  explicit WorkerProcess(WorkerSpec spec);
  ~WorkerProcess();  // kills the process group if still running, and reaps
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  pid_t pid() const { return pid_; }
  const WorkerSpec& spec() const { return spec_; }
  // The pipe ends still open, for poll().
  std::vector<int> fds() const;
  // Reads what is available on `fd` and forwards whole lines; at end of file, the rest.
  void drain(int fd);
  // Non-blocking reap; true once the process has exited (then status() is valid).
  bool poll_exit();
  bool exited() const { return exited_; }
  int status() const { return status_; }  // as from waitpid
  // Sends `sig` to the worker's whole process group.
  void signal(int sig) const;
  // "exited with code 3" / "was killed by signal SIGSEGV (11)".
  std::string describe_status() const;
  // The exit code the launcher reports for this worker: its code, or 128 + signal.
  int exit_code() const;
  const std::deque<std::string>& last_lines() const { return tail_; }

  static constexpr size_t kTailLines = 20;

 private:
  struct Stream {
    int fd = -1;
    bool is_err = false;
    std::string partial;
  };
  void emit(const Stream& s, const std::string& line);

  WorkerSpec spec_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
  Stream out_, err_;
  int log_fd_ = -1;
  std::deque<std::string> tail_;
};

}  // namespace cohort::launcher
