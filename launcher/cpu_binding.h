// Where `cohort launch` places its workers on the node's CPUs (--cpu-bind), as Open MPI's
// --bind-to does: each local rank gets its share of the cores the launcher may use, whole
// physical cores (hyperthreads stay together) in order, or a NUMA node each; a rank that drives
// a GPU gets its share of the cores the GPU's PCI device is local to. A worker's thread pool
// follows its binding (core::available_cores). Under mpirun and srun the workers are placed by
// those and the binding is only reported (describe_binding).
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

enum class CpuBind { kCores, kNuma, kNone };
// "cores", "numa", "none"; ConfigError naming --cpu-bind otherwise.
CpuBind parse_cpu_bind(const std::string& text);
const char* cpu_bind_name(CpuBind b);

using CpuList = std::vector<int>;  // sorted CPU numbers

// "0-3,8,10-11" (the kernel's cpulist format) both ways. Parsing bounds every number, so that a
// hostile sysfs or environment cannot make it allocate without limit; ConfigError naming `what`
// when malformed.
CpuList parse_cpulist(const std::string& text, const std::string& what);
std::string cpulist_text(const CpuList& cpus);

// What the launcher learns of the node under `sysfs` (normally /sys).
struct Topology {
  std::vector<int> core_of_cpu;     // physical core id per CPU number (-1 where unknown)
  std::vector<CpuList> numa_nodes;  // the CPUs of each NUMA node; empty when sysfs has none
  std::vector<CpuList> gpu_cpus;    // NVIDIA GPUs in PCI bus order: the CPUs local to each
};
Topology read_topology(const std::string& sysfs = "/sys");

// The CPUs this process may run on (its affinity).
CpuList allowed_cpus();

// The CPUs for each of `nlocal` local ranks; empty lists (run anywhere) where mode is none or,
// for cores, where there are more ranks than cores. Ranks driving GPUs (gpu_ranks: local rank r
// uses GPU r) split the cores local to their GPU when the topology names them.
std::vector<CpuList> plan_binding(CpuBind mode, const CpuList& allowed, const Topology& topology,
                                  int nlocal, bool gpu_ranks);

// For a worker's banner: "cpus 0-1 (cohort launch --cpu-bind cores)", "(mpirun)", "(srun)", or
// "cpus 0-63 (not bound)" when the process may run anywhere.
std::string describe_binding();

}  // namespace cohort::launcher
