// `cohort ps`: one parameter server, serving its Shard over gRPC. It listens only on the
// configured address, answers only clients that have proven they hold the job's secret, refuses
// malformed, oversized and mismatched messages with an error status and keeps serving the others.
// A background thread drops workers that have gone silent and logs it.
#pragma once

#include <memory>
#include <string>

#include "parameter_server/shard.h"

namespace cohort::ps {

struct ServerOptions {
  ShardOptions shard;
  std::string bind = "127.0.0.1";  // the interface's address; never a wildcard by default
  int port = 0;                    // 0: a free port chosen by the OS
  std::string secret;              // required
  // Larger messages are refused by gRPC itself (RESOURCE_EXHAUSTED). Chunks are 1 MiB of values.
  int max_message_bytes = 4 << 20;
};

// The gRPC library's version ("1.51.1"); "none" in a build without gRPC.
std::string grpc_version();

class Server {
 public:
  // Listens and serves on gRPC's threads until shutdown(). Throws ConfigError when the secret is
  // empty, DistributedError when the address cannot be bound.
  explicit Server(ServerOptions o);
  ~Server();  // shutdown()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;
  std::string address() const;  // bind:port
  Shard& shard();
  // Stops accepting calls, cancels those waiting (bounded), writes a last checkpoint. Idempotent.
  void shutdown();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cohort::ps
