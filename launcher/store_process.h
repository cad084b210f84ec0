// A TcpStore server in a child process, for the benchmarks: its memory and descriptors are its
// own (as the launcher's store is on a node of its own), and the benchmark's clients do not count
// against its descriptor limit. Internal to the launcher.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "collectives/store/tcp_store.h"
#include "collectives/store/token.h"

namespace cohort::launcher {

struct ServerProcess {
  pid_t pid = -1;
  uint16_t port = 0;
  int stop_fd = -1;  // closing it ends the server
};

// Forks the server (loopback, a port the OS picks) and returns once it listens. Call it before
// starting threads.
ServerProcess start_server(const collectives::JobToken& token,
                           const collectives::TcpStoreLimits& limits = {});

// A process's resident memory in KiB (VmRSS), or -1.
long rss_kib(pid_t pid);

}  // namespace cohort::launcher
