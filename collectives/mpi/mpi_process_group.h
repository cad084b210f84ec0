// The mpi backend: collectives through Open MPI, for jobs started by mpirun (or srun --mpi=pmix).
// Each group gets its own communicator over the members' MPI_COMM_WORLD ranks, learned through the
// Store, so sub-groups work as with the other backends. MPI calls are non-blocking and polled by
// the group's OpRunner, so every operation keeps its timeout and the Store-based diagnosis of who
// never entered it. The backend lives in libcohort_mpi.so (backend_modules.h): these open it, or
// throw ConfigError saying what is missing (the module, Open MPI's libraries).
#pragma once

#include <memory>

#include "collectives/process_group.h"

namespace cohort::collectives::mpi {

// One MPI process per group rank. Initialises MPI (MPI_THREAD_SERIALIZED) on first use.
std::shared_ptr<ProcessGroup> create(std::shared_ptr<Store> store, int rank, int size,
                                     const ProcessGroupOptions& options);

// For workers started by mpirun with no store address: MPI_COMM_WORLD rank 0 hosts a TcpStore on
// a port the OS picks and every rank learns host:port by MPI broadcast. Collective over
// MPI_COMM_WORLD.
std::shared_ptr<Store> bootstrap_store(Millis timeout);

}  // namespace cohort::collectives::mpi
