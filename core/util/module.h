// Cohort's optional backends live in shared-library modules of their own, next to libcohort_core:
// libcohort_cuda.so (kernels, cuBLAS, cuDNN, the caching allocator), libcohort_nccl.so,
// libcohort_mpi.so and libcohort_grpc.so (the parameter server's transport). Each is opened the
// first time a job uses it, so a CPU job never maps a CUDA, NCCL or MPI library, and one build runs
// on GPU nodes, CPU nodes and login nodes alike.
#pragma once

#include <string>

namespace cohort::core::module {

// The directory the modules are looked for in: libcohort_core's.
std::string directory();

// Where the module `name` ("cuda", "nccl", "mpi") is looked for: libcohort_<name>.so in the
// directory libcohort_core was loaded from.
std::string path(const std::string& name);

// Opens the module and returns the address of its entry point `symbol`; null on failure, with
// `why` set to one clause saying what is missing: the module itself, a library it needs (named,
// e.g. "libcudnn.so.9 is not installed"), or a module from another build. `global` makes the
// module's symbols visible to libraries it opens later (Open MPI's plugins need libmpi's).
void* open(const std::string& name, const char* symbol, bool global, std::string& why);

// open() for a module file anywhere (tests); `name` words the messages.
void* open_file(const std::string& file, const std::string& name, const char* symbol, bool global,
                std::string& why);

// Whether libcohort_<name>.so is mapped into this process already (for `cohort env` and tests).
bool is_loaded(const std::string& name);

}  // namespace cohort::core::module
