// The boundary between libcohort_collectives and the process-group backends that need vendor
// libraries: libcohort_nccl.so (NCCL, the CUDA runtime) and libcohort_mpi.so (Open MPI). Each
// module exports one of these structs under its symbol name; nccl::create and mpi::create open
// the module on first use (core/util/module.h), so a job that never asks for nccl or mpi never
// maps those libraries.
#pragma once

#include <memory>
#include <string>

#include "collectives/process_group.h"

namespace cohort::collectives {

using CreateGroupFn = std::shared_ptr<ProcessGroup> (*)(std::shared_ptr<Store> store, int rank,
                                                        int size,
                                                        const ProcessGroupOptions& options);

struct NcclModule {
  const char* cohort_version;  // COHORT_VERSION of the build the module came from
  CreateGroupFn create;
  std::string (*library_version)();  // "2.27.7"
};
inline constexpr const char* kNcclModuleSymbol = "cohort_nccl_module";

struct MpiModule {
  const char* cohort_version;
  CreateGroupFn create;
  std::shared_ptr<Store> (*bootstrap_store)(Millis timeout);
  std::string (*library_version)();  // MPI_Get_library_version's first line
};
inline constexpr const char* kMpiModuleSymbol = "cohort_mpi_module";

// The opened modules, or ConfigError saying what is missing (the module, libnccl.so.2, ...).
const NcclModule& nccl_module();
const MpiModule& mpi_module();
// The same without throwing: null, with `why` set, when the module cannot be opened.
const NcclModule* try_nccl_module(std::string& why);
const MpiModule* try_mpi_module(std::string& why);

}  // namespace cohort::collectives
