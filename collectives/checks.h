// Argument checks shared by every backend, so that each misuse gets the same one-sentence error
// (InvalidArgument) whichever backend the user picked.
#pragma once

#include "core/tensor/tensor.h"

namespace cohort::collectives {

// Defined, contiguous and on the device type `backend` works with (nccl: CUDA; cpu, mpi: CPU).
void check_tensor(const core::Tensor& t, const char* what, const char* backend);
void check_root(int root, int size, const char* what);
// `role` is "destination" or "source".
void check_peer(int peer, int rank, int size, const char* what, const char* role);
void check_allgather(const core::Tensor& out, const core::Tensor& in, int size);
void check_reduce_scatter(const core::Tensor& out, const core::Tensor& in, int size);
void check_alltoall(const core::Tensor& out, const core::Tensor& in, int size);

}  // namespace cohort::collectives
