// Server and PsWorker as every process sees them: forwarding to the gRPC transport module
// (transport.h), opened on first use.
#include "parameter_server/transport.h"

#include <cstring>

#include "cohort/config.h"
#include "core/util/error.h"
#include "core/util/module.h"

namespace cohort::ps {
namespace {

struct Opened {
  const TransportModule* entry = nullptr;
  std::string why;
};

const Opened& opened() {
  static const Opened o = [] {
    Opened r;
    if (!COHORT_USE_GRPC) {
      r.why =
          "this build of cohort has no gRPC; install libgrpc++-dev protobuf-compiler-grpc "
          "(scripts/install-deps.sh) and rebuild";
      return r;
    }
    const auto* entry = static_cast<const TransportModule*>(
        core::module::open("grpc", kTransportSymbol, false, r.why));
    if (entry && std::strcmp(entry->cohort_version, COHORT_VERSION) != 0)
      r.why = "cohort's grpc module " + core::module::path("grpc") + " is from cohort " +
              entry->cohort_version + ", this is cohort " COHORT_VERSION;
    else
      r.entry = entry;
    return r;
  }();
  return o;
}

const TransportModule& transport() {
  if (!opened().entry)
    COHORT_THROW(ConfigError,
                 "parameter-server mode needs gRPC, which is not available: ", opened().why);
  return *opened().entry;
}

}  // namespace

std::string grpc_version() {
  return opened().entry ? opened().entry->grpc_version() : "none (" + opened().why + ")";
}

class Server::Impl {
 public:
  std::unique_ptr<ServerTransport> t;
};

Server::Server(ServerOptions o) : impl_(std::make_unique<Impl>()) {
  impl_->t = transport().server(std::move(o));
}
Server::~Server() = default;
int Server::port() const { return impl_->t->port(); }
std::string Server::address() const { return impl_->t->address(); }
Shard& Server::shard() { return impl_->t->shard(); }
void Server::shutdown() { impl_->t->shutdown(); }

class PsWorker::Impl {
 public:
  std::unique_ptr<WorkerTransport> t;
};

PsWorker::PsWorker(std::vector<core::Tensor> params, const std::vector<std::string>& names,
                   ClientOptions o)
    : impl_(std::make_unique<Impl>()) {
  impl_->t = transport().worker(std::move(params), names, std::move(o));
}
PsWorker::~PsWorker() = default;
void PsWorker::pull(int64_t step) { impl_->t->pull(step); }
void PsWorker::begin_step(int64_t step, double lr, int64_t samples, bool during_backward) {
  impl_->t->begin_step(step, lr, samples, during_backward);
}
void PsWorker::push_all() { impl_->t->push_all(); }
StepResult PsWorker::finish_step() { return impl_->t->finish_step(); }
void PsWorker::leave() { impl_->t->leave(); }
const std::vector<Piece>& PsWorker::pieces() const { return impl_->t->pieces(); }
int64_t PsWorker::bytes_per_step() const { return impl_->t->bytes_per_step(); }

}  // namespace cohort::ps
