// Run directories never mix runs, resumes check what they resume, and stopping keeps work: the
// scenarios of a user who reruns a command, changes a setting, starts two runs at once, presses
// Ctrl-C, or has a worker restarted (issue: "bring your own model, data and scripts", item 5-6).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using cohort::test::run_command;

class RunDirs : public cohort::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing (scripts/install-deps.sh)";
  }
  // A small MLP run into RUN (a directory under the test's).
  std::string train(const std::string& run, const std::string& extra) const {
    return std::string(COHORT_BINARY) + " train " + COHORT_SOURCE_DIR +
           "/configs/fashion_mnist_mlp.yaml model.hidden=[32] data.batch_size=32 threads=1 "
           "train.log_every=5 eval.max_batches=1 logging.dir=" +
           (dir_ / run).string() + " " + extra;
  }
  std::vector<std::string> checkpoints(const std::string& run) const {
    std::vector<std::string> out;
    for (auto& e : fs::directory_iterator(dir_ / run / "checkpoints"))
      if (e.path().filename().string().rfind("step_", 0) == 0)
        out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  // Runs `cmd` in the background, waits for its metrics to reach `step`, sends `signals` (a shell
  // list such as "INT" or "INT INT") and prints "exit=<code>".
  std::string stop_at(const std::string& cmd, const std::string& run, int step,
                      const std::string& signals, double between_s = 0) const {
    return "sh -c '" + cmd +
           " & p=$!; while kill -0 $p 2>/dev/null && ! grep -q \"step\\\":" + std::to_string(step) +
           "}\" " + (dir_ / run / "metrics.jsonl").string() +
           " 2>/dev/null; do sleep 0.01; done; for s in " + signals + "; do kill -$s $p; sleep " +
           std::to_string(between_s) + "; done; wait $p; echo exit=$?'";
  }
};

// The issue's report: an older run left step_50/75/100; a new run (resume never, 40 steps, a
// checkpoint every 10, keep 3) used to exit 0 while pruning all of its own checkpoints. Now the
// new run is refused with one sentence, rerunning without resume is refused too, and the old
// run's files are untouched.
TEST_F(RunDirs, ANewRunIntoAnotherRunsDirectoryIsRefusedAndNothingIsLost) {
  auto a = run_command(train("r", "train.steps=100 checkpoint.every_steps=25 checkpoint.keep=3"));
  ASSERT_EQ(a.code, 0) << a.output;
  ASSERT_EQ(checkpoints("r"), (std::vector<std::string>{"step_100", "step_50", "step_75"}));
  const auto record = nlohmann::json::parse(read_text(dir_ / "r" / "run.json"));
  for (const char* key : {"run_id", "started", "config_sha256", "git_commit", "host"})
    EXPECT_TRUE(record.contains(key)) << key << " missing from run.json: " << record.dump();
  EXPECT_EQ(record["config_sha256"].get<std::string>().size(), 64u);
  const std::string metrics = read_text(dir_ / "r" / "metrics.jsonl");
  for (const std::string resume : {"checkpoint.resume=never ", ""}) {
    auto b = run_command(
        train("r", resume + "train.steps=40 checkpoint.every_steps=10 checkpoint.keep=3"));
    EXPECT_EQ(b.code, 2) << b.output;
    EXPECT_NE(
        b.output.find("holds another run's files (run " + record["run_id"].get<std::string>()),
        std::string::npos)
        << b.output;
    EXPECT_NE(b.output.find("continue that run with checkpoint.resume=auto"), std::string::npos);
    EXPECT_EQ(checkpoints("r"), (std::vector<std::string>{"step_100", "step_50", "step_75"}));
    EXPECT_EQ(read_text(dir_ / "r" / "metrics.jsonl"), metrics);
  }
  // Asked to continue it, a run does, and appends to its metrics.
  auto c = run_command(train("r", "train.steps=110 checkpoint.resume=auto"));
  ASSERT_EQ(c.code, 0) << c.output;
  EXPECT_NE(c.output.find("resumed from " + (dir_ / "r" / "checkpoints" / "step_100").string()),
            std::string::npos)
      << c.output;
  EXPECT_EQ(read_text(dir_ / "r" / "metrics.jsonl").rfind(metrics, 0), 0u);
  const auto after = nlohmann::json::parse(read_text(dir_ / "r" / "run.json"));
  EXPECT_EQ(after["run_id"], record["run_id"]);
  EXPECT_EQ(after["resumed"].size(), 1u) << after.dump();
}

// Resuming checks the checkpoint's config: a changed optimizer type or model is refused naming the
// key (an SGD state read as AdamW's sent the loss to 41); a changed learning rate or step count is
// allowed and printed.
TEST_F(RunDirs, AResumeRefusesChangedStateKeysAndPrintsTheOtherChanges) {
  auto a = run_command(train("r", "train.steps=20"));
  ASSERT_EQ(a.code, 0) << a.output;
  auto adamw =
      run_command(train("r", "train.steps=30 checkpoint.resume=auto optimizer.type=adamw"));
  EXPECT_EQ(adamw.code, 2) << adamw.output;
  EXPECT_NE(adamw.output.find("these keys give its state another meaning and differ from this "
                              "config: optimizer.type: sgd -> adamw"),
            std::string::npos)
      << adamw.output;
  auto model = run_command(train("r", "train.steps=30 checkpoint.resume=auto model.hidden=[16]"));
  EXPECT_EQ(model.code, 2) << model.output;
  EXPECT_NE(model.output.find("model.hidden: [32] -> [16]"), std::string::npos) << model.output;
  auto lr = run_command(train("r", "train.steps=30 checkpoint.resume=auto optimizer.lr=0.01"));
  ASSERT_EQ(lr.code, 0) << lr.output;
  EXPECT_NE(lr.output.find("resuming with a changed setting: optimizer.lr: 0.05 -> 0.01"),
            std::string::npos)
      << lr.output;
  EXPECT_NE(lr.output.find("resuming with a changed setting: train.steps: 20 -> 30"),
            std::string::npos)
      << lr.output;
  EXPECT_NE(lr.output.find("summary: steps 30"), std::string::npos) << lr.output;
}

// Two runs at once into one directory: the second is refused while the first holds it (so they
// never share a metrics.jsonl). Then Ctrl-C stops the first like SIGTERM: the step finishes, a
// checkpoint is written, exit 130; and the run continues from that checkpoint.
TEST_F(RunDirs, ASecondRunIsRefusedWhileTheFirstRunsAndCtrlCCheckpoints) {
  const std::string first = train("r", "train.steps=100000 checkpoint.every_steps=100000");
  const std::string script =
      "sh -c '" + first + " & p=$!; while kill -0 $p 2>/dev/null && ! grep -q \"step\\\":20}\" " +
      (dir_ / "r" / "metrics.jsonl").string() + " 2>/dev/null; do sleep 0.01; done; " +
      train("r", "train.steps=10 checkpoint.resume=auto") + "; echo second=$?; kill -INT $p; " +
      "wait $p; echo exit=$?'";
  auto r = run_command(script);
  EXPECT_NE(r.output.find("is in use by another running job (pid "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("second=2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("exit=130"), std::string::npos) << r.output;
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(r.output, m, std::regex(R"(SIGINT stopped training after step (\d+))")))
      << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "r" / "checkpoints" / ("step_" + m[1].str())));
  auto resumed = run_command(train(
      "r", "train.steps=" + std::to_string(std::stoll(m[1]) + 5) + " checkpoint.resume=auto"));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("(step " + m[1].str() + ","), std::string::npos) << resumed.output;
}

// A second Ctrl-C does not wait for the step: the process ends at once, without a checkpoint.
TEST_F(RunDirs, ASecondCtrlCStopsAtOnce) {
  // Each step takes 3 s (the straggler hook), so both signals land inside one step.
  auto r = run_command(stop_at(
      "env COHORT_TEST_STEP_DELAY_MS=0:3000 " + train("r", "train.steps=100 train.log_every=1"),
      "r", 1, "INT INT", 0.3));
  EXPECT_NE(r.output.find("exit=130"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("second SIGINT: stopping at once"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("stopped training after step"), std::string::npos) << r.output;
  EXPECT_TRUE(!fs::exists(dir_ / "r" / "checkpoints") || checkpoints("r").empty());
}

// Ctrl-C on cohort launch reaches every worker; they stop after the same step with one
// checkpoint, and the launcher exits 130.
TEST_F(RunDirs, CtrlCOnCohortLaunchCheckpointsEveryRankAtTheSameStep) {
  const std::string cmd = std::string(COHORT_BINARY) + " launch --nproc-per-node 2 -- " +
                          train("r",
                                "train.steps=100000 checkpoint.every_steps=100000 "
                                "distributed.timeout_s=60");
  auto r = run_command(stop_at(cmd, "r", 20, "INT"));
  EXPECT_NE(r.output.find("exit=130"), std::string::npos) << r.output;
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(r.output, m, std::regex(R"(SIGINT stopped training after step (\d+))")))
      << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "r" / "checkpoints" / ("step_" + m[1].str()))) << r.output;
}

}  // namespace
