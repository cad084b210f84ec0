#include "launcher/rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "core/util/env.h"
#include "core/util/error.h"
#include "launcher/worker_env.h"
#include "parameter_server/auth.h"

namespace cohort::launcher {

namespace {

// Whether `host` resolves (IPv4) to an address in 127.0.0.0/8 on this node.
bool resolves_to_loopback(const std::string& host) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) return false;
  const auto* in = reinterpret_cast<const sockaddr_in*>(res->ai_addr);
  const bool loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  ::freeaddrinfo(res);
  return loopback;
}

}  // namespace

collectives::TcpStoreLimits rendezvous_store_limits(int nnodes, int per_node) {
  collectives::TcpStoreLimits l;
  l.max_connections = std::max(l.max_connections, nnodes * per_node + 64);
  l.max_handshakes = std::max(l.max_handshakes, nnodes + 16);
  l.accept_burst = std::max(l.accept_burst, nnodes + 16);
  return l;
}

Rendezvous::Rendezvous(const LaunchOptions& o) : o_(o), token_(job_token(o)) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.rdzv_timeout_s * 1000));
  collectives::TcpStoreServerOptions so;
  so.token = token_;
  so.limits = rendezvous_store_limits(o.nnodes, o.nproc_per_node + o.ps_servers + 4);
  if (o.nnodes == 1 && o.rdzv_endpoint.empty()) {
    // Nothing outside this node has any business with a one-node job's store.
    host_ = so.bind = "127.0.0.1";
    server_ = std::make_unique<collectives::TcpStoreServer>(so);
    port_ = server_->port();
  } else {
    const HostPort at = parse_host_port(o.rdzv_endpoint, "--rdzv-endpoint");
    host_ = at.host;
    port_ = at.port;
    if (o.node_rank == 0) {
      // Only the interface the other nodes were told to use; but a name that resolves to
      // loopback here (Debian maps a host's own name to 127.0.1.1) is not what they reach.
      so.bind = o.nnodes > 1 && resolves_to_loopback(host_) ? "" : host_;
      if (so.bind.empty())
        std::fprintf(stderr,
                     "cohort launch: %s resolves to a loopback address on node 0, which the other "
                     "nodes cannot reach; the store listens on every interface (it admits only "
                     "this job's token)\n",
                     host_.c_str());
      so.port = port_;
      try {
        server_ = std::make_unique<collectives::TcpStoreServer>(so);
      } catch (const DistributedError& e) {
        COHORT_THROW(ConfigError, "node 0 hosts the rendezvous store on --rdzv-endpoint ", host_,
                     ":", port_, ", so that host must name an address of node 0: ", e.what());
      }
    }
  }
  try {
    collectives::TcpStoreOptions co;
    co.host = host_;
    co.port = port_;
    co.token = token_;
    co.role = collectives::StoreRole::kAgent;
    co.timeout = timeout;
    raw_ = std::make_shared<collectives::TcpStore>(std::move(co));
  } catch (const TimeoutError& e) {
    COHORT_THROW(ConfigError, "node ", o.node_rank, " could not reach the rendezvous ", host_, ":",
                 port_, " within ", o.rdzv_timeout_s, " s: ", e.what());
  } catch (const DistributedError& e) {
    COHORT_THROW(ConfigError, "node ", o.node_rank, " cannot use the rendezvous ", host_, ":",
                 port_, ": ", e.what());
  }
  RendezvousSettings rs;
  rs.max_nodes = o.nnodes;
  rs.min_nodes = o.min_nnodes > 0 ? o.min_nnodes : o.nnodes;
  rs.elastic = rs.min_nodes < rs.max_nodes;
  rs.node_rank = o.node_rank;
  rs.nproc = o.nproc_per_node;
  rs.host = o.node_rank == 0;
  rs.timeout_s = o.rdzv_timeout_s;
  rs.last_call_s = o.rdzv_last_call_s;
  rs.heartbeat_timeout_s = std::min(o.heartbeat_timeout_s, o.rdzv_timeout_s);
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  rs.label = name;
  agent_ = std::make_unique<AgentRendezvous>(
      std::make_shared<collectives::PrefixStore>("launch", raw_), rs);
}

bool Rendezvous::join(int round) {
  join_asked_ = false;
  next_join_check_ = Clock::now() + std::chrono::seconds(1);
  try {
    return agent_->join(round).has_value();
  } catch (const DistributedError& e) {
    COHORT_THROW(ConfigError, "node ", o_.node_rank, " cannot use the rendezvous ", host_, ":",
                 port_, ": ", e.what());
  }
}

std::string Rendezvous::master_port() {
  if (o_.node_rank == 0) {
    const std::string port = std::to_string(o_.master_port ? o_.master_port : free_port());
    if (nnodes() > 1 || elastic()) agent_->publish("master_port", port);
    return port;
  }
  return agent_->read("master_port");
}

void Rendezvous::announce_replacement() {
  try {
    // The trainer's store: the round's prefix, then "train" (trainer::join_job).
    raw_->add("attempt" + std::to_string(membership().round) + "/train/heal/replacing", 1);
  } catch (const std::exception&) {
  }
}

std::string Rendezvous::check() {
  std::string what = agent_->check();
  if (!what.empty() || !elastic() || o_.node_rank != 0 || join_asked_ || nnodes() >= o_.nnodes ||
      Clock::now() < next_join_check_)
    return what;
  next_join_check_ = Clock::now() + std::chrono::seconds(1);
  try {
    if (const int waiting = agent_->pending_joiners(); waiting > 0) {
      // Where cohort's trainer looks: its store is the round's prefix (COHORT_STORE_PREFIX) and
      // then "train" (trainer::join_job). It stops at its next checkpoint with exit code
      // kExitMembership, and every agent meets again.
      raw_->set("attempt" + std::to_string(membership().round) + "/train/membership/join",
                std::to_string(waiting));
      join_asked_ = true;
      std::fprintf(stderr,
                   "cohort launch: %d node(s) waiting to join; the workers make room at their "
                   "next checkpoint\n",
                   waiting);
      std::fflush(stderr);
    }
  } catch (const std::exception&) {
    // The store is gone: agent_->check() says so at its next look.
  }
  return what;
}

std::string Rendezvous::ps_secret() const {
  if (const char* s = env::get(env::kPsSecret)) return s;
  return token_.derive_secret(ps::kSecretLabel);
}

std::string Rendezvous::local_address() const {
  if (o_.nnodes == 1 && o_.rdzv_endpoint.empty()) return "127.0.0.1";
  // The address of the interface that reaches node 0: a connected UDP socket sends nothing.
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (::getaddrinfo(host_.c_str(), std::to_string(port_).c_str(), &hints, &res) != 0 || !res)
    return "127.0.0.1";
  std::string out = "127.0.0.1";
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    char buf[INET_ADDRSTRLEN] = {};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        ::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf))
      out = buf;
  }
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(res);
  return out;
}

collectives::JobToken Rendezvous::job_token(const LaunchOptions& o) {
  const bool one_node = o.nnodes == 1 && o.rdzv_endpoint.empty();
  auto given = collectives::JobToken::from_environment();
  // A one-node launch inside a worker (a test harness under cohort launch) sees that worker's
  // part; it starts a job of its own.
  if (given && (given->is_job() || !one_node)) {
    if (!given->is_job())
      COHORT_THROW(AuthError,
                   "the agents of a multi-node job need the job's token, but "
                   "COHORT_TOKEN holds a worker's ('worker:...'); give every agent "
                   "the job's token, or unset COHORT_TOKEN to derive it");
    return *given;
  }
  if (one_node) return collectives::JobToken::generate();
  std::string id = "launch|" + o.rdzv_endpoint + "|" + o.run_id;
  if (const char* job = env::get(env::kSlurmJobId)) id += std::string("|slurm ") + job;
  return collectives::JobToken::for_job(id);
}

}  // namespace cohort::launcher
