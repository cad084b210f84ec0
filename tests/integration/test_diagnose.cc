// Hangs made on purpose, and what `cohort diagnose RUN_DIR` makes of the ranks' flight-recorder
// dumps: a rank slowed past the collective timeout on the cpu and mpi backends, and a running
// rank asked where it is with SIGUSR2.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include "cohort/config.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::kTinyGpt;
using cohort::test::read_text;
using cohort::test::run_command;
using namespace std::chrono_literals;

class Diagnose : public cohort::test::TempDirTest {
 protected:
  std::string train(const std::string& run) const {
    return std::string(COHORT_BINARY) + " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " +
           kTinyGpt + " train.steps=6 distributed.timeout_s=2 logging.dir=" + (dir_ / run).string();
  }
  std::string diagnose(const std::string& run) const {
    const auto r = run_command(std::string(COHORT_BINARY) + " diagnose " + (dir_ / run).string());
    EXPECT_EQ(r.code, 0) << r.output;
    return r.output;
  }
};

TEST_F(Diagnose, ARankSlowedPastTheTimeoutIsNamedOnTheCpuBackend) {
  // Rank 1 sleeps 6 s in a step; rank 0 gives up on the next collective after 2 s.
  const auto r = run_command("env COHORT_TEST_STEP_DELAY_MS=1:6000 " + std::string(COHORT_BINARY) +
                             " launch --nproc-per-node 2 -- " + train("run"));
  ASSERT_NE(r.code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir_ / "run" / "flight_recorder" / "rank_0.json")) << r.output;
  const std::string d = diagnose("run");
  EXPECT_TRUE(std::regex_search(d, std::regex("rank 1 never entered allreduce #[0-9]+ of group 0")))
      << d;
  EXPECT_TRUE(std::regex_search(d, std::regex("rank 0 waited [0-9.]+ s in it"))) << d;
  // The launcher said the same in its failure summary.
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort launch: diagnosis: rank 1 never entered allreduce #[0-9]+")))
      << r.output;
}

TEST_F(Diagnose, ARankStillStuckIsAskedForItsDumpBeforeTheLauncherStopsIt) {
  // Rank 1 is still in its 20 s step when rank 0 gives up, and is killed after a 1 s grace
  // period: only the launcher's SIGUSR2 gets its dump written.
  const auto r = run_command("env COHORT_TEST_STEP_DELAY_MS=1:20000 " + std::string(COHORT_BINARY) +
                             " launch --nproc-per-node 2 --grace-period 1 -- " + train("run"));
  ASSERT_EQ(r.code, 4) << r.output;
  EXPECT_NE(read_text(dir_ / "run" / "flight_recorder" / "rank_1.json").find("\"SIGUSR2\""),
            std::string::npos);
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort launch: diagnosis: rank 1 never entered allreduce #[0-9]+ of "
                           "group 0 \\([^)]*\\); rank 0 waited [0-9.]+ s in it\\. Rank 1's last "
                           "completed collective before it was allreduce #[0-9]+\\.")))
      << r.output;
}

TEST_F(Diagnose, ARankSlowedPastTheTimeoutIsNamedOnTheMpiBackend) {
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  const auto r =
      run_command("env COHORT_TEST_STEP_DELAY_MS=1:6000 " +
                  cohort::test::mpirun_command(2, train("run") + " distributed.backend=mpi"));
  ASSERT_NE(r.code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir_ / "run" / "flight_recorder" / "rank_0.json")) << r.output;
  const std::string d = diagnose("run");
  // mpirun may kill rank 1 before it writes a dump: then the paragraph says so.
  EXPECT_TRUE(std::regex_search(
      d, std::regex("rank 1 never entered allreduce #[0-9]+ of group 0|Rank 1 wrote no dump")))
      << d;
  EXPECT_TRUE(std::regex_search(d, std::regex("rank 0 waited [0-9.]+ s in it"))) << d;
}

TEST_F(Diagnose, SigusrTwoAsksARunningRankWhereItIs) {
  const fs::path dump = dir_ / "run" / "flight_recorder" / "rank_0.json";
  const std::string cmd = "exec env COHORT_TEST_STEP_DELAY_MS=0:200 " + train("run") +
                          " train.steps=1000 >" + (dir_ / "out").string() + " 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
    _exit(127);
  }
  // Once it trains (its metrics appear), ask it.
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < deadline &&
         read_text(dir_ / "run" / "metrics.jsonl").empty())
    std::this_thread::sleep_for(50ms);
  bool asked = false;
  while (std::chrono::steady_clock::now() < deadline && !fs::exists(dump)) {
    asked = kill(pid, SIGUSR2) == 0 || asked;
    std::this_thread::sleep_for(200ms);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  ASSERT_TRUE(asked);
  ASSERT_TRUE(fs::exists(dump)) << read_text(dir_ / "out");
  EXPECT_NE(read_text(dump).find("\"reason\": \"SIGUSR2\""), std::string::npos) << read_text(dump);
}

// A rank slowed by 100 ms a step holds the other back: it is named while the job runs (stderr and
// metrics.jsonl), the other is not, and every rank's step, data and collective-wait times reach
// metrics.jsonl and TensorBoard.
TEST_F(Diagnose, AStragglerIsNamedWhileTheJobRuns) {
  const auto r = run_command(
      "env COHORT_TEST_STEP_DELAY_MS=1:100 " + std::string(COHORT_BINARY) +
      " launch --nproc-per-node 2 -- " + std::string(COHORT_BINARY) +
      " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " + kTinyGpt +
      " train.steps=20 train.log_every=5 diagnostics.straggler_steps=10 distributed.timeout_s=60 "
      "logging.dir=" +
      (dir_ / "run").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort: straggler at step 10: rank 1 on node 0 \\([^)]+\\): "
                           "[0-9.]+x the median step time of the other ranks over the last 10 "
                           "steps \\(its own time per step, without waiting for them: [0-9.]+ ms "
                           "against [0-9.]+ ms\\); its data wait is [0-9]+%")))
      << r.output;
  EXPECT_EQ(r.output.find("straggler at step 10: rank 0"), std::string::npos) << r.output;
  const std::string metrics = read_text(dir_ / "run" / "metrics.jsonl");
  EXPECT_NE(metrics.find("\"event\":\"straggler\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"rank_collective_wait_ms\":["), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"rank_data_ms\":["), std::string::npos) << metrics;
  std::string events;
  for (const auto& f : fs::directory_iterator(dir_ / "run"))
    if (f.path().filename().string().rfind("events.out.tfevents", 0) == 0)
      events += read_text(f.path());
  for (const char* tag :
       {"collective_wait_ms/rank_0", "data_wait_ms/rank_1", "step_time_ms/rank_1"})
    EXPECT_NE(events.find(tag), std::string::npos) << tag;
}

}  // namespace
