// A real single-node Slurm cluster (slurmctld, slurmd, munge; scripts/slurm/cluster.sh), started
// and stopped by the test: `srun` tasks find their rank and the store from Slurm's variables, and
// `cohort slurm submit` runs a job through sbatch to the end.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using namespace std::chrono_literals;

// Runs a shell command; returns its exit code and output.
std::pair<int, std::string> sh(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[512];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = p ? pclose(p) : -1;
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}

class SlurmCluster : public cohort::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    if (geteuid() != 0) GTEST_SKIP() << "the Slurm daemons need root";
    auto [rc, out] = sh(script() + " up " + (dir_ / "cluster").string());
    if (rc == 3) GTEST_SKIP() << "no Slurm cluster on this machine: " << out;
    ASSERT_EQ(rc, 0) << out;
    up_ = true;
    // The last line is the path of slurm.conf; daemons may print warnings before it.
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);)
      if (line.size() > 11 && line.compare(line.size() - 11, 11, "/slurm.conf") == 0) conf_ = line;
    ASSERT_FALSE(conf_.empty()) << out;
  }
  void TearDown() override {
    if (up_) sh(script() + " down " + (dir_ / "cluster").string());
    TempDirTest::TearDown();
  }
  static std::string script() {
    return std::string(COHORT_SOURCE_DIR) + "/scripts/slurm/cluster.sh";
  }
  std::string env() const { return "SLURM_CONF=" + conf_ + " "; }
  bool up_ = false;
  std::string conf_;
};

TEST_F(SlurmCluster, SrunTasksFindTheirRanksAndTheStore) {
  auto [rc, out] = sh(env() + "timeout 120 srun --immediate=60 -n 3 " + std::string(COHORT_BINARY) +
                      " bench collectives -b 4K -e 1M -f 16 --iters 5");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("backend cpu, transport auto, 3 ranks"), std::string::npos) << out;
}

TEST_F(SlurmCluster, SlurmSubmitRunsAJobToTheEnd) {
  const fs::path run = dir_ / "run";
  auto [rc, job] = sh(env() + std::string(COHORT_BINARY) + " slurm submit " + COHORT_SOURCE_DIR +
                      "/configs/fashion_mnist_mlp.yaml --nodes 1 --ntasks-per-node 2 logging.dir=" +
                      run.string() + " train.steps=20 data.batch_size=64");
  ASSERT_EQ(rc, 0) << job;
  job = job.substr(0, job.find('\n'));
  ASSERT_FALSE(job.empty());
  ASSERT_EQ(job.find_first_not_of("0123456789"), std::string::npos) << "not a job id: " << job;
  std::string state;
  const auto end = std::chrono::steady_clock::now() + 180s;
  while (std::chrono::steady_clock::now() < end) {
    state = sh(env() + "scontrol show job " + job).second;
    if (state.find("JobState=COMPLETED") != std::string::npos ||
        state.find("JobState=FAILED") != std::string::npos)
      break;
    std::this_thread::sleep_for(200ms);
  }
  const std::string log = read_text(run / ("slurm-" + job + ".out"));
  EXPECT_NE(state.find("JobState=COMPLETED"), std::string::npos) << state << log;
  // Two data-parallel ranks: one summary, from rank 0, for the whole job.
  EXPECT_NE(log.find("summary: steps 20"), std::string::npos) << log;
  EXPECT_NE(log.find("world_size 2"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1: "), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(run / "slurm-submit.sbatch"));
}

}  // namespace
