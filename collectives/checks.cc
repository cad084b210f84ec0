#include "collectives/checks.h"

#include <cstring>

#include "core/util/error.h"

namespace cohort::collectives {

void check_tensor(const core::Tensor& t, const char* what, const char* backend) {
  COHORT_CHECK(t.defined(), what, ": the tensor is undefined");
  const bool wants_cuda = std::strcmp(backend, "nccl") == 0;
  if (wants_cuda) {
    COHORT_CHECK(t.device().is_cuda(), what, ": the nccl backend needs CUDA tensors, got one on ",
                 t.device().str(), "; use the cpu or mpi backend for CPU tensors");
  } else {
    COHORT_CHECK(t.device().is_cpu(), what, ": the ", backend,
                 " backend needs CPU tensors, got one on ", t.device().str(),
                 "; use the nccl backend for CUDA tensors");
  }
  COHORT_CHECK(t.is_contiguous(), what, ": the tensor must be contiguous; call .contiguous()");
}

void check_root(int root, int size, const char* what) {
  COHORT_CHECK(root >= 0 && root < size, what, ": root ", root, " is outside the group of size ",
               size);
}

void check_peer(int peer, int rank, int size, const char* what, const char* role) {
  COHORT_CHECK(peer >= 0 && peer < size && peer != rank, what, ": ", role, " rank ", peer,
               " must be another rank of the group of size ", size);
}

void check_allgather(const core::Tensor& out, const core::Tensor& in, int size) {
  COHORT_CHECK(out.dtype() == in.dtype() && out.numel() == in.numel() * size, "allgather: output (",
               core::dtype_name(out.dtype()), ", ", out.numel(), " elements) must hold ", size,
               " copies of the input (", core::dtype_name(in.dtype()), ", ", in.numel(), ")");
}

void check_reduce_scatter(const core::Tensor& out, const core::Tensor& in, int size) {
  COHORT_CHECK(out.dtype() == in.dtype() && in.numel() == out.numel() * size,
               "reduce_scatter: input (", in.numel(), " elements) must hold ", size,
               " blocks of the output's ", out.numel(), " elements, of the same dtype");
}

void check_alltoall(const core::Tensor& out, const core::Tensor& in, int size) {
  COHORT_CHECK(out.dtype() == in.dtype() && out.numel() == in.numel() && in.numel() % size == 0,
               "alltoall: input and output must have the same dtype and a number of elements "
               "divisible by the group size ",
               size, ", got ", in.numel(), " and ", out.numel());
}

}  // namespace cohort::collectives
