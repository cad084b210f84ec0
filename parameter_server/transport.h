// The boundary between libcohort_ps (placement, the servers' state, the wire codec: what a job
// needs whatever carries it) and the gRPC transport, libcohort_grpc.so: Server and PsWorker
// forward to these interfaces, which the transport implements. It is opened the first time a
// parameter server or worker is made (core/util/module.h), so that no other process maps gRPC,
// protobuf and Abseil's 45 libraries (a third of a worker's start-up).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parameter_server/client.h"
#include "parameter_server/server.h"

namespace cohort::ps {

class ServerTransport {
 public:
  virtual ~ServerTransport() = default;  // shuts down
  virtual int port() const = 0;
  virtual std::string address() const = 0;
  virtual Shard& shard() = 0;
  virtual void shutdown() = 0;
};

class WorkerTransport {
 public:
  virtual ~WorkerTransport() = default;
  virtual void pull(int64_t step) = 0;
  virtual void begin_step(int64_t step, double lr, int64_t samples, bool during_backward) = 0;
  virtual void push_all() = 0;
  virtual StepResult finish_step() = 0;
  virtual void leave() = 0;
  virtual const std::vector<Piece>& pieces() const = 0;
  virtual int64_t bytes_per_step() const = 0;
};

// What libcohort_grpc.so exports under kTransportSymbol.
struct TransportModule {
  const char* cohort_version;  // COHORT_VERSION of the build the module came from
  std::unique_ptr<ServerTransport> (*server)(ServerOptions o);
  std::unique_ptr<WorkerTransport> (*worker)(std::vector<core::Tensor> params,
                                             const std::vector<std::string>& names,
                                             ClientOptions o);
  std::string (*grpc_version)();
};
inline constexpr const char* kTransportSymbol = "cohort_grpc_module";

}  // namespace cohort::ps
