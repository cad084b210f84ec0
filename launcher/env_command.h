// `cohort env`: what this build has and what this machine and environment offer, for bug reports
// (PyTorch's collect_env): version, compiler, optional backends, GPUs, the CPU's vector units, the
// BLAS in use, and the job this process would join.
#pragma once

namespace cohort::launcher {

int env_command();

}  // namespace cohort::launcher
