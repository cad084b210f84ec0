// TcpStore: one process (the launcher, or rank 0) hosts the server; every rank is a client. Every
// connection proves the job's token before its first request (see tcp_store_protocol.h); clients
// retry with backoff while the server starts, and every request has a deadline.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "collectives/store/store.h"
#include "collectives/store/token.h"

namespace cohort::collectives {

// What the server accepts. A request beyond a limit is answered with an error naming the limit;
// a peer that breaks the protocol is disconnected. The defaults keep the server's memory and
// descriptors bounded whatever its clients do: unauthenticated peers hold at most
// max_handshakes connections of a few hundred bytes each for at most handshake_timeout.
struct TcpStoreLimits {
  static constexpr size_t kDefaultMaxKey = 4096;
  static constexpr size_t kDefaultMaxValue = 4u << 20;
  size_t max_key_bytes = kDefaultMaxKey;
  size_t max_value_bytes = kDefaultMaxValue;
  size_t max_total_bytes = size_t{256} << 20;  // keys and values together
  // Authenticated connections; each has at most one request (so one wait) pending.
  int max_connections = 1024;
  // Connections still in the handshake; past this the oldest is dropped.
  int max_handshakes = 128;
  Millis handshake_timeout{10000};
  // New connections accepted per second, and at once, not counting those whose first request is
  // served: beyond them a flood of strangers (or of connections opened only to be abandoned)
  // waits in the kernel's backlog, and the io thread keeps serving the job's connections.
  int accept_rate = 1000;
  int accept_burst = 512;
  // A request whose first byte arrived but whose last has not.
  Millis frame_timeout{30000};
};

struct TcpStoreServerOptions {
  uint16_t port = 0;  // 0: the OS picks one
  // The address to listen on: "127.0.0.1" (one-node jobs), a host name or address (the interface
  // the other nodes reach), or "" for every interface.
  std::string bind = "127.0.0.1";
  // The job's token (both roles), or a worker's part (the worker role only).
  JobToken token;
  TcpStoreLimits limits;
  // Keys under this prefix belong to the agent role: a worker may neither read nor write them.
  std::string agent_prefix = "launch/";
};

// The server alone, for hosts that serve but do not take part (the launcher). Runs on its own
// thread until destroyed. Its descriptors are close-on-exec.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(TcpStoreServerOptions options);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;
  uint16_t port() const;

  // Counters for tests and diagnostics (read on the caller's thread; approximate while busy).
  struct Stats {
    int connections = 0;  // authenticated and in the handshake
    int waiting = 0;      // parked GET/WAIT requests
    int64_t refused = 0;  // wrong token, bad handshake, limits
  };
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct TcpStoreOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  JobToken token;
  // Workers use the worker role; only the launcher's agents use kAgent.
  StoreRole role = StoreRole::kWorker;
  // Also host the server, listening on `bind` (port 0: the OS picks one, see port()).
  bool is_server = false;
  std::string bind = "127.0.0.1";
  Millis timeout = Store::kDefaultTimeout;
};

class TcpStore final : public Store {
 public:
  // Connecting retries until `timeout`, then throws TimeoutError; a refused token is AuthError.
  explicit TcpStore(TcpStoreOptions options);
  ~TcpStore() override;

  // Keys over TcpStoreLimits::kDefaultMaxKey bytes and values over kDefaultMaxValue throw
  // InvalidArgument naming the limit.
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  std::string compare_set(const std::string& key, const std::string& expected,
                          const std::string& desired) override;
  bool check(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  using Store::wait;
  bool delete_key(const std::string& key) override;
  int64_t num_keys() override;
  std::shared_ptr<Store> clone() override;

  uint16_t port() const { return o_.port; }
  const std::string& host() const { return o_.host; }
  // The local IP address this client reaches the server from: the interface peers can use to
  // reach this process.
  std::string local_address();

 private:
  struct Client;
  TcpStoreOptions o_;
  std::unique_ptr<TcpStoreServer> server_;
  std::unique_ptr<Client> client_;
};

}  // namespace cohort::collectives
