// TcpStore: one process (rank 0 or the launcher) hosts the server; every rank is a client. Clients
// retry with backoff while the server starts, and every request has a deadline.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "collectives/store/store.h"

namespace cohort::collectives {

// The server alone, for hosts that serve but do not take part (the launcher). Runs on its own
// thread until destroyed. Binds all interfaces; port 0 lets the OS choose.
class TcpStoreServer {
 public:
  explicit TcpStoreServer(uint16_t port = 0);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;
  uint16_t port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class TcpStore final : public Store {
 public:
  // A client of the server at host:port; with is_server, also hosts that server (port 0: the OS
  // picks one, see port()). Connecting retries until `timeout`, then throws TimeoutError.
  TcpStore(std::string host, uint16_t port, bool is_server = false,
           Millis timeout = kDefaultTimeout);
  ~TcpStore() override;

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

  uint16_t port() const { return port_; }
  const std::string& host() const { return host_; }
  // The local IP address this client reaches the server from: the interface peers can use to
  // reach this process.
  std::string local_address();

 private:
  struct Client;
  std::string host_;
  uint16_t port_;
  std::unique_ptr<TcpStoreServer> server_;
  std::unique_ptr<Client> client_;
};

}  // namespace cohort::collectives
