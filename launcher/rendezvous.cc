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

Rendezvous::Rendezvous(const LaunchOptions& o) : o_(o), token_(job_token(o)) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.rdzv_timeout_s * 1000));
  collectives::TcpStoreServerOptions so;
  so.token = token_;
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
    store_ = std::make_shared<collectives::PrefixStore>(
        "launch", std::make_shared<collectives::TcpStore>(std::move(co)));
    store_->set("node/" + std::to_string(o.node_rank), std::to_string(o.nproc_per_node));
    std::vector<std::string> keys;
    for (int n = 0; n < o.nnodes; ++n) keys.push_back("node/" + std::to_string(n));
    store_->wait(keys, timeout);
    world_ = 0;
    for (int n = 0; n < o.nnodes; ++n) {
      const int count = std::stoi(store_->get(keys[n]));
      if (n < o.node_rank) offset_ += count;
      world_ += count;
    }
  } catch (const TimeoutError& e) {
    COHORT_THROW(ConfigError, "node ", o.node_rank, " could not meet the other ", o.nnodes - 1,
                 " node(s) at the rendezvous ", host_, ":", port_, " within ", o.rdzv_timeout_s,
                 " s: ", e.what());
  } catch (const DistributedError& e) {
    COHORT_THROW(ConfigError, "node ", o.node_rank, " cannot use the rendezvous ", host_, ":",
                 port_, ": ", e.what());
  }
  last_beat_.assign(static_cast<size_t>(o.nnodes), {-1, Clock::now()});
}

std::string Rendezvous::master_port(int attempt) {
  if (o_.node_rank == 0) {
    const std::string port = std::to_string(o_.master_port ? o_.master_port : free_port());
    if (o_.nnodes > 1) store_->set(key(attempt, "master_port"), port);
    return port;
  }
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.rdzv_timeout_s * 1000));
  store_->wait({key(attempt, "master_port")}, timeout);
  return store_->get(key(attempt, "master_port"));
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

void Rendezvous::post_failure(int attempt, const std::string& text) {
  try {
    store_->compare_set(key(attempt, "failed"), "", text);
  } catch (const std::exception&) {
    // The store host is gone; the other agents notice that themselves.
  }
}

bool Rendezvous::all_done(int attempt) {
  std::vector<std::string> keys;
  for (int n = 0; n < o_.nnodes; ++n) keys.push_back(key(attempt, "done/" + std::to_string(n)));
  return store_->check(keys);
}

void Rendezvous::leave(int attempt) {
  if (o_.nnodes == 1) return;
  try {
    store_->set(key(attempt, "left/" + node()), "1");
    if (o_.node_rank != 0) return;
    std::vector<std::string> keys;
    for (int n = 0; n < o_.nnodes; ++n) keys.push_back(key(attempt, "left/" + std::to_string(n)));
    store_->wait(keys, std::chrono::milliseconds(
                           static_cast<int64_t>(std::min(o_.rdzv_timeout_s, 30.0) * 1000)));
  } catch (const std::exception&) {
    // An agent that is gone cannot say so; its absence is already reported.
  }
}

std::string Rendezvous::check(int attempt) {
  if (o_.nnodes == 1) return "";
  try {
    if (store_->check({key(attempt, "failed")})) return store_->get(key(attempt, "failed"));
    // Heartbeats matter on the scale of --rdzv-timeout: once a second is plenty, and keeps the
    // store's load from growing with nodes squared at every monitor interval.
    const auto now = Clock::now();
    if (now < next_beat_) return "";
    next_beat_ = now + std::chrono::seconds(1);
    store_->add("beat/" + node(), 1);
    const auto limit = std::chrono::milliseconds(static_cast<int64_t>(o_.rdzv_timeout_s * 1000));
    for (int n = 0; n < o_.nnodes; ++n) {
      if (n == o_.node_rank) continue;
      const int64_t beat = store_->add("beat/" + std::to_string(n), 0);
      auto& [seen, since] = last_beat_[static_cast<size_t>(n)];
      if (beat != seen) {
        seen = beat;
        since = now;
      } else if (now - since > limit) {
        return "the agent of node " + std::to_string(n) + " stopped responding (no heartbeat for " +
               std::to_string(static_cast<int>(o_.rdzv_timeout_s)) + " s)";
      }
    }
  } catch (const std::exception& e) {
    return std::string("the rendezvous store is gone (node 0's agent has probably exited): ") +
           e.what();
  }
  return "";
}

std::string Rendezvous::key(int attempt, const std::string& what) {
  return "attempt" + std::to_string(attempt) + "/" + what;
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
