#include "collectives/backend_modules.h"

#include <cstring>

#include "cohort/config.h"
#include "collectives/mpi/mpi_process_group.h"
#include "collectives/nccl/nccl_process_group.h"
#include "core/util/error.h"
#include "core/util/module.h"

namespace cohort::collectives {
namespace {

template <typename Entry>
struct Opened {
  const Entry* entry = nullptr;
  std::string why;
};

template <typename Entry>
Opened<Entry> open_module(const char* name, const char* symbol, bool built, const char* package,
                          bool global) {
  Opened<Entry> o;
  if (!built) {
    o.why = std::string("this build of cohort has no ") + name + " backend (it was built without " +
            package + ")";
    return o;
  }
  const auto* entry = static_cast<const Entry*>(core::module::open(name, symbol, global, o.why));
  if (!entry) return o;
  if (std::strcmp(entry->cohort_version, COHORT_VERSION) != 0) {
    o.why = "cohort's " + std::string(name) + " module " + core::module::path(name) +
            " is from cohort " + entry->cohort_version + ", this is cohort " COHORT_VERSION;
    return o;
  }
  o.entry = entry;
  return o;
}

const Opened<NcclModule>& nccl_opened() {
  static const auto o =
      open_module<NcclModule>("nccl", kNcclModuleSymbol, COHORT_USE_NCCL, "NCCL", false);
  return o;
}

// Open MPI's own plugins resolve libmpi's symbols globally, so the module that brings libmpi in
// is opened RTLD_GLOBAL.
const Opened<MpiModule>& mpi_opened() {
  static const auto o =
      open_module<MpiModule>("mpi", kMpiModuleSymbol, COHORT_USE_MPI, "Open MPI", true);
  return o;
}

}  // namespace

const NcclModule* try_nccl_module(std::string& why) {
  why = nccl_opened().why;
  return nccl_opened().entry;
}
const MpiModule* try_mpi_module(std::string& why) {
  why = mpi_opened().why;
  return mpi_opened().entry;
}

const NcclModule& nccl_module() {
  if (!nccl_opened().entry)
    COHORT_THROW(ConfigError, "the nccl backend is not available: ", nccl_opened().why);
  return *nccl_opened().entry;
}

const MpiModule& mpi_module() {
  if (!mpi_opened().entry)
    COHORT_THROW(ConfigError, "the mpi backend is not available: ", mpi_opened().why);
  return *mpi_opened().entry;
}

namespace nccl {
std::shared_ptr<ProcessGroup> create(std::shared_ptr<Store> store, int rank, int size,
                                     const ProcessGroupOptions& options) {
  return nccl_module().create(std::move(store), rank, size, options);
}
}  // namespace nccl

namespace mpi {
std::shared_ptr<ProcessGroup> create(std::shared_ptr<Store> store, int rank, int size,
                                     const ProcessGroupOptions& options) {
  return mpi_module().create(std::move(store), rank, size, options);
}

std::shared_ptr<Store> bootstrap_store(Millis timeout) {
  std::string why;
  const MpiModule* m = try_mpi_module(why);
  if (!m)
    COHORT_THROW(ConfigError,
                 "this worker runs under mpirun without COHORT_STORE, and MPI, which would find "
                 "the store, is not available (",
                 why, "); set COHORT_STORE=host:port or file:PATH");
  return m->bootstrap_store(timeout);
}
}  // namespace mpi

}  // namespace cohort::collectives
