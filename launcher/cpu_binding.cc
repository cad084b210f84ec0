#include "launcher/cpu_binding.h"

#include <sched.h>
#include <sys/sysinfo.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/util/error.h"

namespace cohort::launcher {
namespace {

// Far above any machine's CPU count, so that no text can make a list of unbounded size.
constexpr int kMaxCpu = 1 << 16;

std::string read_line(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::string line;
  std::getline(f, line);
  return line;
}

CpuList intersect(const CpuList& a, const CpuList& b) {
  CpuList out;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}

// The allowed CPUs as whole physical cores, in CPU order: hyperthreads of a core stay together.
std::vector<CpuList> cores_of(const CpuList& cpus, const Topology& t) {
  std::vector<CpuList> cores;
  std::map<int, size_t> index_of_core;
  for (int cpu : cpus) {
    const int core = cpu < static_cast<int>(t.core_of_cpu.size()) ? t.core_of_cpu[cpu] : -1;
    if (core < 0) {
      cores.push_back({cpu});
      continue;
    }
    auto [it, fresh] = index_of_core.try_emplace(core, cores.size());
    if (fresh) cores.emplace_back();
    cores[it->second].push_back(cpu);
  }
  return cores;
}

// Rank r of n gets a contiguous run of the units (cores or NUMA nodes); with fewer units than
// ranks (NUMA nodes), ranks share them evenly.
std::vector<CpuList> split(const std::vector<CpuList>& units, int n) {
  std::vector<CpuList> out(static_cast<size_t>(n));
  const int u = static_cast<int>(units.size());
  if (u == 0) return out;
  for (int r = 0; r < n; ++r) {
    int begin = static_cast<int>(static_cast<int64_t>(r) * u / n);
    int end = static_cast<int>(static_cast<int64_t>(r + 1) * u / n);
    if (end <= begin) end = begin + 1;
    for (int i = begin; i < end && i < u; ++i)
      out[r].insert(out[r].end(), units[i].begin(), units[i].end());
    std::sort(out[r].begin(), out[r].end());
  }
  return out;
}

}  // namespace

CpuBind parse_cpu_bind(const std::string& text) {
  if (text == "cores" || text == "core") return CpuBind::kCores;
  if (text == "numa") return CpuBind::kNuma;
  if (text == "none") return CpuBind::kNone;
  COHORT_THROW(ConfigError, "--cpu-bind ", text, " is not one of cores, numa or none");
}

const char* cpu_bind_name(CpuBind b) {
  switch (b) {
    case CpuBind::kCores:
      return "cores";
    case CpuBind::kNuma:
      return "numa";
    case CpuBind::kNone:
      break;
  }
  return "none";
}

CpuList parse_cpulist(const std::string& raw, const std::string& what) {
  std::string text = raw;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  CpuList cpus;
  if (text.empty()) return cpus;
  std::stringstream in(text);
  std::string item;
  auto number = [&](const std::string& s) {
    if (s.empty() || s.size() > 6 || s.find_first_not_of("0123456789") != std::string::npos)
      COHORT_THROW(ConfigError, what, ": '", raw, "' is not a CPU list such as 0-3,8");
    const int v = std::atoi(s.c_str());
    if (v >= kMaxCpu) COHORT_THROW(ConfigError, what, ": CPU ", v, " is out of range");
    return v;
  };
  while (std::getline(in, item, ',')) {
    const size_t dash = item.find('-');
    const int first = number(item.substr(0, dash));
    const int last = dash == std::string::npos ? first : number(item.substr(dash + 1));
    if (last < first) COHORT_THROW(ConfigError, what, ": the range ", item, " runs backwards");
    for (int c = first; c <= last; ++c) cpus.push_back(c);
    if (cpus.size() > static_cast<size_t>(kMaxCpu))
      COHORT_THROW(ConfigError, what, ": more than ", kMaxCpu, " CPUs");
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string cpulist_text(const CpuList& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

Topology read_topology(const std::string& sysfs) {
  namespace fs = std::filesystem;
  Topology t;
  const fs::path root(sysfs);
  std::error_code ec;
  // Unreadable or malformed entries leave that part of the topology unknown: binding then falls
  // back to plain CPU order, never fails a launch.
  auto list = [](const fs::path& p) {
    try {
      return parse_cpulist(read_line(p), p.string());
    } catch (const ConfigError&) {
      return CpuList{};
    }
  };
  for (int cpu : list(root / "devices/system/cpu/online")) {
    const fs::path topo = root / "devices/system/cpu" / ("cpu" + std::to_string(cpu)) / "topology";
    const std::string core = read_line(topo / "core_id"),
                      package = read_line(topo / "physical_package_id");
    if (static_cast<int>(t.core_of_cpu.size()) <= cpu) t.core_of_cpu.resize(cpu + 1, -1);
    if (core.empty() || core.size() > 6 || package.size() > 6) continue;
    t.core_of_cpu[cpu] = std::atoi(package.c_str()) * 1000000 + std::atoi(core.c_str());
  }
  for (int node : list(root / "devices/system/node/online")) {
    CpuList cpus = list(root / "devices/system/node" / ("node" + std::to_string(node)) / "cpulist");
    if (!cpus.empty()) t.numa_nodes.push_back(std::move(cpus));
  }
  std::vector<std::string> gpus;
  for (const auto& dev : fs::directory_iterator(root / "bus/pci/devices", ec)) {
    const std::string cls = read_line(dev.path() / "class");
    // NVIDIA's vendor id; display (0x0300) and 3D (0x0302) controllers.
    if (read_line(dev.path() / "vendor") == "0x10de" &&
        (cls.rfind("0x0300", 0) == 0 || cls.rfind("0x0302", 0) == 0))
      gpus.push_back(dev.path().string());
  }
  std::sort(gpus.begin(), gpus.end());
  for (const auto& g : gpus) t.gpu_cpus.push_back(list(fs::path(g) / "local_cpulist"));
  return t;
}

CpuList allowed_cpus() {
  cpu_set_t set;
  CpuList cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

std::vector<CpuList> plan_binding(CpuBind mode, const CpuList& allowed, const Topology& topology,
                                  int nlocal, bool gpu_ranks) {
  if (mode == CpuBind::kNone || nlocal <= 0 || allowed.empty())
    return std::vector<CpuList>(static_cast<size_t>(std::max(nlocal, 0)));
  if (mode == CpuBind::kNuma) {
    std::vector<CpuList> nodes;
    for (const CpuList& node : topology.numa_nodes)
      if (CpuList mine = intersect(node, allowed); !mine.empty()) nodes.push_back(std::move(mine));
    if (nodes.empty()) nodes.push_back(allowed);
    return split(nodes, nlocal);
  }
  // A rank per GPU: the ranks whose GPUs are local to the same CPUs split those CPUs' cores.
  if (gpu_ranks && static_cast<int>(topology.gpu_cpus.size()) >= nlocal) {
    std::map<CpuList, std::vector<int>> ranks_near;
    bool known = true;
    for (int r = 0; r < nlocal; ++r) {
      CpuList near = intersect(topology.gpu_cpus[r], allowed);
      if (near.empty()) known = false;
      ranks_near[near].push_back(r);
    }
    if (known) {
      std::vector<CpuList> out(static_cast<size_t>(nlocal));
      for (const auto& [near, ranks] : ranks_near) {
        const auto shares = split(cores_of(near, topology), static_cast<int>(ranks.size()));
        for (size_t i = 0; i < ranks.size(); ++i) out[ranks[i]] = shares[i];
      }
      return out;
    }
  }
  // More ranks than cores: as Open MPI, leave them to the scheduler, which can move a rank
  // that waits off the core its peer needs.
  const std::vector<CpuList> cores = cores_of(allowed, topology);
  if (nlocal > static_cast<int>(cores.size()))
    return std::vector<CpuList>(static_cast<size_t>(nlocal));
  return split(cores, nlocal);
}

std::string describe_binding() {
  const CpuList mine = allowed_cpus();
  std::string by;
  const char* b = std::getenv("COHORT_CPU_BIND");
  if (b && *b && std::string_view(b) != "none")
    by = std::string("cohort launch --cpu-bind ") + b;
  else if (std::getenv("OMPI_COMM_WORLD_RANK"))
    by = "mpirun";
  else if (std::getenv("SLURM_STEP_ID"))
    by = "srun";
  const CpuList online = [] {
    try {
      return parse_cpulist(read_line("/sys/devices/system/cpu/online"), "cpu/online");
    } catch (const ConfigError&) {
      return CpuList{};
    }
  }();
  // Without sysfs (a chroot) the count of online CPUs still tells whether this process may use
  // them all.
  const bool anywhere = mine.empty() || mine == online ||
                        (online.empty() && static_cast<int>(mine.size()) == get_nprocs());
  std::string text = "cpus " + cpulist_text(mine);
  if (anywhere && (by.empty() || by == "cohort launch --cpu-bind none"))
    return text + " (not bound)";
  return text + " (" + (by.empty() ? "inherited affinity" : "bound by " + by) + ")";
}

}  // namespace cohort::launcher
