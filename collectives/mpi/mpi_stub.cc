// Builds without Open MPI (COHORT_USE_MPI=OFF) link this instead of mpi_process_group.cc.
#include "collectives/mpi/mpi_process_group.h"
#include "core/util/error.h"

namespace cohort::collectives::mpi {

std::shared_ptr<ProcessGroup> create(std::shared_ptr<Store>, int, int, const ProcessGroupOptions&) {
  COHORT_THROW(ConfigError,
               "the mpi backend is not in this build of cohort (COHORT_USE_MPI=OFF); "
               "install libopenmpi-dev and rebuild, or use the cpu backend");
}

std::shared_ptr<Store> bootstrap_store(Millis) {
  COHORT_THROW(ConfigError,
               "this worker runs under mpirun without COHORT_STORE, but this build of cohort has "
               "no MPI (COHORT_USE_MPI=OFF) to find the store with; set COHORT_STORE=host:port "
               "or file:PATH");
}

}  // namespace cohort::collectives::mpi
