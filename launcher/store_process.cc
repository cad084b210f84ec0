#include "launcher/store_process.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "core/util/error.h"

namespace cohort::launcher {

// The server in a child process: it reports its port, then serves until its stdin pipe closes.
ServerProcess start_server(const collectives::JobToken& token,
                           const collectives::TcpStoreLimits& limits) {
  int port_pipe[2], stop_pipe[2];
  if (::pipe2(port_pipe, O_CLOEXEC) != 0 || ::pipe2(stop_pipe, O_CLOEXEC) != 0)
    COHORT_THROW(Error, "store process: cannot create pipes");
  ServerProcess s;
  s.pid = ::fork();
  if (s.pid < 0) COHORT_THROW(Error, "store process: fork failed");
  if (s.pid == 0) {
    ::close(port_pipe[0]);
    ::close(stop_pipe[1]);
    int rc = 0;
    try {
      collectives::TcpStoreServerOptions o;
      o.token = token;
      o.limits = limits;
      collectives::TcpStoreServer server(o);
      const uint16_t port = server.port();
      (void)!::write(port_pipe[1], &port, sizeof port);
      char c;
      while (::read(stop_pipe[0], &c, 1) > 0) {
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "store process: the server failed: %s\n", e.what());
      rc = 1;
    }
    ::_exit(rc);
  }
  ::close(port_pipe[1]);
  ::close(stop_pipe[0]);
  if (::read(port_pipe[0], &s.port, sizeof s.port) != sizeof s.port)
    COHORT_THROW(Error, "store process: the server process did not start");
  ::close(port_pipe[0]);
  s.stop_fd = stop_pipe[1];
  return s;
}

long rss_kib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

}  // namespace cohort::launcher
