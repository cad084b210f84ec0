// The nccl backend: collectives on CUDA tensors through NCCL. The communicator is created on the
// first operation, on the device of its tensors, from a unique id that rank 0 publishes through
// the Store. Operations run on the group's own stream, ordered after the work already queued on
// the tensor's device by an event (never a device-wide sync); Work completes when the NCCL kernel
// has. A watchdog thread enforces each operation's timeout: it names the ranks that never entered
// the collective (from the Store), aborts the communicator so that no kernel stays stuck, and
// fails the group. The backend lives in libcohort_nccl.so (backend_modules.h): create() opens it,
// or throws ConfigError saying what is missing (the module, NCCL, the CUDA runtime).
#pragma once

#include <memory>

#include "collectives/process_group.h"

namespace cohort::collectives::nccl {

std::shared_ptr<ProcessGroup> create(std::shared_ptr<Store> store, int rank, int size,
                                     const ProcessGroupOptions& options);

}  // namespace cohort::collectives::nccl
