// Where a worker learns who it is: Cohort's, torchrun's, Open MPI's and Slurm's variables, their
// precedence, and Slurm's compressed host and task lists; and `cohort launch`'s torchrun-style
// stream specs (--redirects, --tee).
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/util/error.h"
#include "launcher/launch.h"
#include "launcher/slurm_env.h"
#include "launcher/worker_env.h"

namespace cohort::launcher {
namespace {

using Strings = std::vector<std::string>;

TEST(StreamSpec, OneValueForEveryLocalRankOrOnePerLocalRank) {
  using Bits = std::vector<int>;
  EXPECT_EQ(parse_stream_spec("--redirects", "", 3), (Bits{0, 0, 0}));
  EXPECT_EQ(parse_stream_spec("--redirects", "3", 3), (Bits{3, 3, 3}));
  EXPECT_EQ(parse_stream_spec("--tee", "0:1,2:2", 3), (Bits{1, 0, 2}));
  EXPECT_EQ(parse_stream_spec("--tee", "1:3", 2), (Bits{0, 3}));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"4", "has '4' for the streams"},
      {"13", "has '13' for the streams"},
      {"0:1,", "has '' where LOCAL_RANK:STREAMS belongs"},
      {"x:1", "has 'x:1' where LOCAL_RANK:STREAMS belongs"},
      {"0:1,1", "has '1' where LOCAL_RANK:STREAMS belongs"},
      {"0:", "has '' for the streams"},
      {"2:1", "names local rank 2 but --nproc-per-node is 2"}};
  for (const auto& [spec, why] : bad) {
    try {
      parse_stream_spec("--redirects", spec, 2);
      ADD_FAILURE() << spec << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--redirects '" + spec + "' " + why), std::string::npos)
          << e.what();
    }
  }
}

TEST(SlurmLists, HostListsExpand) {
  EXPECT_EQ(expand_hostlist("n[1-3,7],m5"), (Strings{"n1", "n2", "n3", "n7", "m5"}));
  EXPECT_EQ(expand_hostlist("node01"), (Strings{"node01"}));
  EXPECT_EQ(expand_hostlist("gpu[08-10]"), (Strings{"gpu08", "gpu09", "gpu10"}));
  EXPECT_EQ(expand_hostlist("r[1-2]n[1-2],x"), (Strings{"r1n1", "r1n2", "r2n1", "r2n2", "x"}));
  for (const char* bad : {"n[1-3", "n[3-1]", "n[a-b]", "n1,,n2", "n]1["}) {
    try {
      expand_hostlist(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(SlurmLists, TasksPerNodeExpand) {
  EXPECT_EQ(expand_tasks_per_node("3(x2),2"), (std::vector<int>{3, 3, 2}));
  EXPECT_EQ(expand_tasks_per_node("4"), (std::vector<int>{4}));
  EXPECT_THROW(expand_tasks_per_node("3(x2"), ConfigError);
  EXPECT_EQ(slurm_port("1234567"), 29500 + 4567);
}

TEST(HostPort, SplitsAtTheLastColonAndNamesWhatWasBad) {
  const HostPort a = parse_host_port("node-1.cluster:29400", "--rdzv-endpoint");
  EXPECT_EQ(a.host, "node-1.cluster");
  EXPECT_EQ(a.port, 29400);
  for (const char* bad : {"nohost", ":29400", "h:", "h:0", "h:70000", "h:12x"}) {
    try {
      parse_host_port(bad, "--rdzv-endpoint");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("--rdzv-endpoint '") + bad + "'"),
                std::string::npos)
          << e.what();
    }
  }
}

class WorkerEnvTest : public ::testing::Test {
 protected:
  void SetUp() override { clear(); }
  void TearDown() override { clear(); }
  static void clear() {
    for (const char* v : {"COHORT_RANK",
                          "COHORT_WORLD_SIZE",
                          "COHORT_LOCAL_RANK",
                          "COHORT_LOCAL_WORLD_SIZE",
                          "COHORT_STORE",
                          "COHORT_STORE_PREFIX",
                          "COHORT_RESTART_COUNT",
                          "RANK",
                          "WORLD_SIZE",
                          "LOCAL_RANK",
                          "LOCAL_WORLD_SIZE",
                          "MASTER_ADDR",
                          "MASTER_PORT",
                          "OMPI_COMM_WORLD_RANK",
                          "OMPI_COMM_WORLD_SIZE",
                          "OMPI_COMM_WORLD_LOCAL_RANK",
                          "OMPI_COMM_WORLD_LOCAL_SIZE",
                          "SLURM_PROCID",
                          "SLURM_NTASKS",
                          "SLURM_STEP_NUM_TASKS",
                          "SLURM_LOCALID",
                          "SLURM_NODEID",
                          "SLURM_TASKS_PER_NODE",
                          "SLURM_STEP_TASKS_PER_NODE",
                          "SLURM_STEP_NODELIST",
                          "SLURM_JOB_NODELIST",
                          "SLURM_JOB_ID"})
      unsetenv(v);
  }
};

TEST_F(WorkerEnvTest, AloneIsOneProcess) {
  WorkerEnv e = detect_worker_env();
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.store, "");
}

TEST_F(WorkerEnvTest, SlurmTasksFindTheFirstNodeOnAPortFromTheJobId) {
  setenv("SLURM_PROCID", "5", 1);
  setenv("SLURM_NTASKS", "6", 1);
  setenv("SLURM_LOCALID", "2", 1);
  setenv("SLURM_NODEID", "1", 1);
  setenv("SLURM_TASKS_PER_NODE", "3(x2)", 1);
  setenv("SLURM_STEP_NODELIST", "n[7-8]", 1);
  setenv("SLURM_JOB_ID", "42", 1);
  WorkerEnv e = detect_worker_env();
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 6);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 3);
  EXPECT_EQ(e.store, "n7:29542");
  EXPECT_FALSE(e.host_store);
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_LOCALID", "0", 1);
  setenv("SLURM_NODEID", "0", 1);
  e = detect_worker_env();
  EXPECT_TRUE(e.host_store);
  EXPECT_EQ(e.store, "127.0.0.1:29542");  // the first node reaches itself through loopback
}

TEST_F(WorkerEnvTest, MpiWinsOverSlurmAndCohortWinsOverAll) {
  // mpirun inside an sbatch job: every rank inherits SLURM_PROCID=0.
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_NTASKS", "1", 1);
  setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  WorkerEnv e = detect_worker_env();
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_TRUE(e.store_through_mpi);
  setenv("COHORT_RANK", "1", 1);
  setenv("COHORT_WORLD_SIZE", "2", 1);
  setenv("COHORT_STORE", "h:1", 1);
  setenv("COHORT_STORE_PREFIX", "attempt2", 1);
  setenv("COHORT_RESTART_COUNT", "2", 1);
  e = detect_worker_env();
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.source, "COHORT_*");
  EXPECT_EQ(e.store_prefix, "attempt2");
  EXPECT_EQ(e.restart_count, 2);
}

TEST_F(WorkerEnvTest, MalformedValuesNameTheVariable) {
  setenv("COHORT_RANK", "x", 1);
  try {
    detect_worker_env();
    ADD_FAILURE() << "accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("COHORT_RANK"), std::string::npos) << e.what();
  }
  clear();
  setenv("RANK", "0", 1);
  setenv("WORLD_SIZE", "2", 1);
  EXPECT_THROW(detect_worker_env(), ConfigError);  // no MASTER_ADDR/MASTER_PORT
}

}  // namespace
}  // namespace cohort::launcher
