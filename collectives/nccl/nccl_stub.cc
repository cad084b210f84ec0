// Builds without NCCL (COHORT_USE_NCCL=OFF) link this instead of nccl_process_group.cc.
#include "collectives/nccl/nccl_process_group.h"
#include "core/util/error.h"

namespace cohort::collectives::nccl {

std::shared_ptr<ProcessGroup> create(std::shared_ptr<Store>, int, int, const ProcessGroupOptions&) {
  COHORT_THROW(ConfigError,
               "the nccl backend is not in this build of cohort (COHORT_USE_NCCL=OFF); "
               "build on a machine with the CUDA Toolkit and NCCL, or use the cpu backend");
}

}  // namespace cohort::collectives::nccl
