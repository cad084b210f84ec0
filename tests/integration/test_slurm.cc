// A real single-node Slurm cluster (slurmctld, slurmd, munge; scripts/slurm/cluster.sh), started
// and stopped by the test: `srun` tasks find their rank and the store from Slurm's variables,
// `cohort slurm submit` runs a job through sbatch to the end, and the SIGUSR1 that Slurm sends its
// tasks before a time limit or preemption makes the job checkpoint, requeue itself and resume.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <regex>
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
    // slurmd's step sockets live under the cluster's directory and a socket path has at most
    // 107 bytes: a short directory of its own, not one named after the test.
    static int clusters = 0;
    cluster_ = fs::temp_directory_path() /
               ("cs" + std::to_string(::getpid()) + "_" + std::to_string(clusters++));
    fs::remove_all(cluster_);
    auto [rc, out] = sh(script() + " up " + cluster_.string());
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
    if (up_) sh(script() + " down " + cluster_.string());
    if (!cluster_.empty()) fs::remove_all(cluster_);
    TempDirTest::TearDown();
  }
  static std::string script() {
    return std::string(COHORT_SOURCE_DIR) + "/scripts/slurm/cluster.sh";
  }
  std::string env() const { return "SLURM_CONF=" + conf_ + " "; }
  bool up_ = false;
  std::string conf_;
  fs::path cluster_;
};

TEST_F(SlurmCluster, SrunTasksFindTheirRanksAndTheStore) {
  auto [rc, out] = sh(env() + "timeout 120 srun --immediate=60 -n 3 " + std::string(COHORT_BINARY) +
                      " bench collectives -b 4K -e 1M -f 16 --iters 5");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("backend cpu, transport auto, 3 ranks"), std::string::npos) << out;
}

class SlurmSubmit : public SlurmCluster {
 protected:
  // `cohort slurm submit` of the MLP config with 2 tasks; returns the job id.
  std::string submit(const std::string& overrides) {
    auto [rc, job] = sh(env() + std::string(COHORT_BINARY) + " slurm submit " + COHORT_SOURCE_DIR +
                        "/configs/fashion_mnist_mlp.yaml --nodes 1 " +
                        "--ntasks-per-node 2 logging.dir=" + run_.string() + " " + overrides);
    EXPECT_EQ(rc, 0) << job;
    job = job.substr(0, job.find('\n'));
    EXPECT_FALSE(job.empty());
    EXPECT_EQ(job.find_first_not_of("0123456789"), std::string::npos) << "not a job id: " << job;
    return job;
  }
  // Polls until `done` accepts `scontrol show job`'s text or the limit passes; returns the text.
  std::string wait_for(const std::string& job, const std::function<bool(const std::string&)>& done,
                       std::chrono::seconds limit = 180s) {
    std::string state;
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      state = sh(env() + "scontrol show job " + job).second;
      if (done(state)) break;
      std::this_thread::sleep_for(200ms);
    }
    return state;
  }
  static bool finished(const std::string& state) {
    for (const char* s : {"JobState=COMPLETED", "JobState=FAILED", "JobState=CANCELLED",
                          "JobState=TIMEOUT", "JobState=NODE_FAIL"})
      if (state.find(s) != std::string::npos) return true;
    return false;
  }
  std::string log(const std::string& job) const {
    return read_text(run_ / ("slurm-" + job + ".out"));
  }
  void SetUp() override {
    SlurmCluster::SetUp();
    run_ = dir_ / "run";  // dir_ exists from SetUp on
  }
  fs::path run_;
};

TEST_F(SlurmSubmit, RunsAJobToTheEnd) {
  const std::string job = submit("train.steps=20 data.batch_size=64");
  const std::string state = wait_for(job, finished);
  const fs::path& run = run_;
  const std::string log = this->log(job);
  EXPECT_NE(state.find("JobState=COMPLETED"), std::string::npos) << state << log;
  // Two data-parallel ranks: one summary, from rank 0, for the whole job.
  EXPECT_NE(log.find("summary: steps 20"), std::string::npos) << log;
  EXPECT_NE(log.find("world_size 2"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1: "), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(run / "slurm-submit.sbatch"));
}

// Another submission is another run: it never resumes an earlier submission's checkpoints (once,
// resubmitting with a new learning rate resumed the old run's last step and trained nothing). Into
// the same run directory it is refused with one sentence; with checkpoint.resume=auto it
// continues that run, and says what changed.
TEST_F(SlurmSubmit, ResubmittingIsANewRun) {
  const std::string first = submit("train.steps=20 data.batch_size=64");
  ASSERT_NE(wait_for(first, finished).find("JobState=COMPLETED"), std::string::npos) << log(first);
  const std::string second = submit("train.steps=40 data.batch_size=64 optimizer.lr=0.01");
  const std::string state = wait_for(second, finished);
  EXPECT_NE(state.find("JobState=FAILED"), std::string::npos) << state << log(second);
  EXPECT_NE(log(second).find("holds another run's files (run slurm-" + first), std::string::npos)
      << log(second);
  EXPECT_EQ(log(second).find("resumed from"), std::string::npos) << log(second);
  const std::string third =
      submit("train.steps=40 data.batch_size=64 optimizer.lr=0.01 checkpoint.resume=auto");
  EXPECT_NE(wait_for(third, finished).find("JobState=COMPLETED"), std::string::npos) << log(third);
  EXPECT_NE(log(third).find("resumed from"), std::string::npos) << log(third);
  EXPECT_NE(log(third).find("optimizer.lr: 0.05 -> 0.01"), std::string::npos) << log(third);
  EXPECT_NE(log(third).find("summary: steps 40"), std::string::npos) << log(third);
}

// Slurm signals a job's tasks (not its batch shell) before the time limit (--signal=USR1@120) and
// before preemption; `scancel --signal=USR1` sends the same signal the same way, without waiting
// for a time limit whose resolution is a minute. The tasks checkpoint and exit 138, the script
// requeues the job, and its second run resumes from the checkpoint and finishes.
TEST_F(SlurmSubmit, SigusrFromSlurmCheckpointsRequeuesAndResumes) {
  const std::string job = submit("train.steps=3000 data.batch_size=64 train.log_every=10");
  // The trainer handles SIGUSR1 once it trains: wait for its first progress line.
  const auto end = std::chrono::steady_clock::now() + 180s;
  while (log(job).find("step 10/3000") == std::string::npos &&
         std::chrono::steady_clock::now() < end &&
         !finished(sh(env() + "scontrol show job " + job).second))
    std::this_thread::sleep_for(100ms);
  ASSERT_NE(log(job).find("step 10/3000"), std::string::npos)
      << "job " << job << ": " << sh(env() + "scontrol show job " + job).second << log(job);
  auto [rc, out] = sh(env() + "scancel --signal=USR1 " + job);
  ASSERT_EQ(rc, 0) << out;
  // Slurm holds a requeued job for two minutes (Reason=BeginTime); an operator may release it
  // sooner, and so does the test.
  const std::string requeued = wait_for(job, [](const std::string& s) {
    return s.find("Restarts=1") != std::string::npos || finished(s);
  });
  ASSERT_NE(requeued.find("Restarts=1"), std::string::npos) << requeued << log(job);
  sh(env() + "scontrol update JobId=" + job + " StartTime=now");
  const std::string state = wait_for(job, finished, 300s);
  const std::string text = log(job);
  EXPECT_NE(state.find("JobState=COMPLETED"), std::string::npos) << state << text;
  EXPECT_NE(state.find("Restarts=1"), std::string::npos) << state;
  EXPECT_NE(text.find("SIGUSR1 stopped training after step"), std::string::npos) << text;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex(R"(resumed from \S+ \(step (\d+), epoch)")))
      << text;
  EXPECT_GT(std::stoll(m[1]), 0);
  EXPECT_LT(std::stoll(m[1]), 3000);
  EXPECT_NE(text.find("summary: steps 3000"), std::string::npos) << text;
}

}  // namespace
