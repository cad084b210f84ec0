// Built when CMake found no gRPC: parameter-server mode says how to get it.
#include "core/util/error.h"
#include "parameter_server/client.h"
#include "parameter_server/server.h"

namespace cohort::ps {
namespace {

[[noreturn]] void no_grpc() {
  COHORT_THROW(ConfigError,
               "this build of cohort has no gRPC, which parameter-server mode needs; install "
               "libgrpc++-dev protobuf-compiler-grpc (scripts/install-deps.sh) and rebuild");
}

}  // namespace

std::string grpc_version() { return "none"; }

class Server::Impl {};
Server::Server(ServerOptions) { no_grpc(); }
Server::~Server() = default;
int Server::port() const { no_grpc(); }
std::string Server::address() const { no_grpc(); }
Shard& Server::shard() { no_grpc(); }
void Server::shutdown() {}

class PsWorker::Impl {};
PsWorker::PsWorker(std::vector<core::Tensor>, const std::vector<std::string>&, ClientOptions) {
  no_grpc();
}
PsWorker::~PsWorker() = default;
void PsWorker::pull(int64_t) { no_grpc(); }
void PsWorker::begin_step(int64_t, double, int64_t, bool) { no_grpc(); }
void PsWorker::push_all() { no_grpc(); }
StepResult PsWorker::finish_step() { no_grpc(); }
void PsWorker::leave() {}
const std::vector<Piece>& PsWorker::pieces() const { no_grpc(); }
int64_t PsWorker::bytes_per_step() const { no_grpc(); }

}  // namespace cohort::ps
