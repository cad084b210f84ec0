// cohort launch --cpu-bind: CPU lists as the kernel writes them, the topology read from a sysfs
// tree made here, and where each local rank goes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/util/error.h"
#include "launcher/cpu_binding.h"
#include "test_util.h"

namespace cohort::launcher {
namespace {

namespace fs = std::filesystem;

TEST(CpuList, ReadsAndWritesTheKernelsFormat) {
  EXPECT_EQ(parse_cpulist("0-3,8,10-11\n", "x"), (CpuList{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(parse_cpulist("", "x"), CpuList{});
  EXPECT_EQ(parse_cpulist("5,1,1", "x"), (CpuList{1, 5}));
  EXPECT_EQ(cpulist_text({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(cpulist_text({}), "");
  for (const char* bad : {"a", "3-1", "1,,2", "-", "0-99999999", "0-70000", "1 2"}) {
    try {
      parse_cpulist(bad, "node0/cpulist");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("node0/cpulist"), std::string::npos) << e.what();
    }
  }
}

TEST(CpuBind, ParsesItsThreeModesAndNamesTheFlagOtherwise) {
  EXPECT_EQ(parse_cpu_bind("cores"), CpuBind::kCores);
  EXPECT_EQ(parse_cpu_bind("numa"), CpuBind::kNuma);
  EXPECT_EQ(parse_cpu_bind("none"), CpuBind::kNone);
  try {
    parse_cpu_bind("socket");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--cpu-bind socket"), std::string::npos);
  }
}

// Two NUMA nodes of two cores each, two hyperthreads per core (CPU c and c+4 share core c % 4),
// and two NVIDIA GPUs: the first on the second node, the second on the first.
class FakeNode : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    write("devices/system/cpu/online", "0-7\n");
    for (int c = 0; c < 8; ++c) {
      const std::string topo = "devices/system/cpu/cpu" + std::to_string(c) + "/topology/";
      write(topo + "core_id", std::to_string(c % 4) + "\n");
      write(topo + "physical_package_id", "0\n");
    }
    write("devices/system/node/online", "0-1\n");
    write("devices/system/node/node0/cpulist", "0-1,4-5\n");
    write("devices/system/node/node1/cpulist", "2-3,6-7\n");
    gpu("0000:41:00.0", "2-3,6-7");
    gpu("0000:c1:00.0", "0-1,4-5");
    // Not a GPU: another vendor's device.
    write("bus/pci/devices/0000:01:00.0/vendor", "0x8086\n");
    write("bus/pci/devices/0000:01:00.0/class", "0x030000\n");
  }
  void write(const std::string& path, const std::string& text) {
    fs::create_directories((dir_ / path).parent_path());
    std::ofstream(dir_ / path) << text;
  }
  void gpu(const std::string& bdf, const std::string& cpus) {
    write("bus/pci/devices/" + bdf + "/vendor", "0x10de\n");
    write("bus/pci/devices/" + bdf + "/class", "0x030200\n");
    write("bus/pci/devices/" + bdf + "/local_cpulist", cpus + "\n");
  }
};

TEST_F(FakeNode, TopologyHasCoresNumaNodesAndGpusInBusOrder) {
  const Topology t = read_topology(dir_.string());
  ASSERT_EQ(t.core_of_cpu.size(), 8u);
  EXPECT_EQ(t.core_of_cpu[1], t.core_of_cpu[5]);
  EXPECT_NE(t.core_of_cpu[1], t.core_of_cpu[2]);
  ASSERT_EQ(t.numa_nodes.size(), 2u);
  EXPECT_EQ(t.numa_nodes[1], (CpuList{2, 3, 6, 7}));
  ASSERT_EQ(t.gpu_cpus.size(), 2u);
  EXPECT_EQ(t.gpu_cpus[0], (CpuList{2, 3, 6, 7}));
}

TEST_F(FakeNode, CoresKeepHyperthreadsTogetherAndSplitInOrder) {
  const Topology t = read_topology(dir_.string());
  const CpuList all{0, 1, 2, 3, 4, 5, 6, 7};
  auto plan = plan_binding(CpuBind::kCores, all, t, 2, false);
  EXPECT_EQ(plan[0], (CpuList{0, 1, 4, 5}));
  EXPECT_EQ(plan[1], (CpuList{2, 3, 6, 7}));
  plan = plan_binding(CpuBind::kCores, all, t, 4, false);
  EXPECT_EQ(plan[3], (CpuList{3, 7}));
  // Three ranks over four cores: nobody shares a core, one rank gets two.
  plan = plan_binding(CpuBind::kCores, all, t, 3, false);
  EXPECT_EQ(plan[0], (CpuList{0, 4}));
  EXPECT_EQ(plan[1], (CpuList{1, 5}));
  EXPECT_EQ(plan[2], (CpuList{2, 3, 6, 7}));
  // Only what the launcher may use (srun --cpus-per-task, taskset) is shared out.
  plan = plan_binding(CpuBind::kCores, {2, 3, 6, 7}, t, 2, false);
  EXPECT_EQ(plan[0], (CpuList{2, 6}));
  EXPECT_EQ(plan[1], (CpuList{3, 7}));
  // More ranks than cores: the scheduler places them.
  plan = plan_binding(CpuBind::kCores, all, t, 5, false);
  for (const CpuList& cpus : plan) EXPECT_TRUE(cpus.empty());
  plan = plan_binding(CpuBind::kNone, all, t, 2, false);
  EXPECT_TRUE(plan[0].empty() && plan[1].empty());
}

TEST_F(FakeNode, NumaGivesEachRankANode) {
  const Topology t = read_topology(dir_.string());
  const CpuList all{0, 1, 2, 3, 4, 5, 6, 7};
  auto plan = plan_binding(CpuBind::kNuma, all, t, 2, false);
  EXPECT_EQ(plan[0], (CpuList{0, 1, 4, 5}));
  EXPECT_EQ(plan[1], (CpuList{2, 3, 6, 7}));
  plan = plan_binding(CpuBind::kNuma, all, t, 4, false);
  EXPECT_EQ(plan[1], (CpuList{0, 1, 4, 5}));
  EXPECT_EQ(plan[2], (CpuList{2, 3, 6, 7}));
}

TEST_F(FakeNode, GpuRanksGetTheCoresNearTheirGpu) {
  const Topology t = read_topology(dir_.string());
  const CpuList all{0, 1, 2, 3, 4, 5, 6, 7};
  // GPU 0 sits on the second NUMA node: rank 0 goes there.
  auto plan = plan_binding(CpuBind::kCores, all, t, 2, true);
  EXPECT_EQ(plan[0], (CpuList{2, 3, 6, 7}));
  EXPECT_EQ(plan[1], (CpuList{0, 1, 4, 5}));
  plan = plan_binding(CpuBind::kCores, all, t, 1, true);
  EXPECT_EQ(plan[0], (CpuList{2, 3, 6, 7}));
}

TEST(CpuTopology, AMissingOrHostileSysfsLeavesItUnknown) {
  const Topology none = read_topology("/nonexistent-sysfs");
  EXPECT_TRUE(none.numa_nodes.empty());
  EXPECT_TRUE(none.gpu_cpus.empty());
  // Without a topology every CPU is its own core.
  const auto plan = plan_binding(CpuBind::kCores, {0, 1, 2, 3}, none, 2, false);
  EXPECT_EQ(plan[0], (CpuList{0, 1}));
  EXPECT_EQ(plan[1], (CpuList{2, 3}));
}

}  // namespace
}  // namespace cohort::launcher

namespace cohort::launcher {
namespace {

TEST_F(FakeNode, AHostileCpuListLeavesThatPartUnknown) {
  write("devices/system/node/node1/cpulist", "0-999999999\n");
  write("bus/pci/devices/0000:41:00.0/local_cpulist", "all of them\n");
  const Topology t = read_topology(dir_.string());
  ASSERT_EQ(t.numa_nodes.size(), 1u);
  ASSERT_EQ(t.gpu_cpus.size(), 2u);
  EXPECT_TRUE(t.gpu_cpus[0].empty());
  // GPU 0's CPUs are unknown: GPU ranks are then placed as any others.
  const auto plan = plan_binding(CpuBind::kCores, {0, 1, 2, 3, 4, 5, 6, 7}, t, 2, true);
  EXPECT_EQ(plan[0], (CpuList{0, 1, 4, 5}));
}

}  // namespace
}  // namespace cohort::launcher
