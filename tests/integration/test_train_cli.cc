// `cohort train` as a user runs it: a real process, its exit code, its run directory.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include "core/ops/cpu/bf16_gemm.h"
#include "test_util.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

namespace {

namespace fs = std::filesystem;

using Result = cohort::test::CommandResult;
Result run(const std::string& cmd, int timeout_s = 600) {
  return cohort::test::run_command(cmd, timeout_s);
}

class TrainCli : public cohort::test::TempDirTest {
 protected:
  std::string cohort() const { return COHORT_BINARY; }
  std::string config(const std::string& name) const {
    return std::string(COHORT_SOURCE_DIR) + "/configs/" + name;
  }
  std::vector<nlohmann::json> metrics(const fs::path& run_dir) const {
    std::vector<nlohmann::json> out;
    std::ifstream f(run_dir / "metrics.jsonl");
    std::string line;
    while (std::getline(f, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }
};

TEST_F(TrainCli, ShortFashionMnistRunLossFalls) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP()
        << "Debian's dataset-fashion-mnist is not installed (scripts/install-deps.sh installs it)";
  fs::path run_dir = dir_ / "run";
  Result r = run(cohort() + " train " + config("fashion_mnist_mlp.yaml") +
                 " train.steps=120 train.log_every=10 " +
                 "eval.max_batches=2 threads=1 logging.dir=" + run_dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  auto m = metrics(run_dir);
  ASSERT_GE(m.size(), 13u);
  double first = m.front()["loss"], last = 0;
  for (auto& rec : m)
    if (rec.contains("loss") && !rec.contains("event")) last = rec["loss"];
  EXPECT_LT(last, first * 0.7) << "loss did not fall: " << first << " -> " << last;
  const auto& summary = m.back();
  EXPECT_EQ(summary["event"], "summary");
  EXPECT_GT(summary["test_acc"].get<double>(), 0.6);
  EXPECT_EQ(summary["world_size"], 1);
  EXPECT_TRUE(fs::exists(run_dir / "config.resolved.yaml"));
}

TEST_F(TrainCli, TinyGptTrains) {
  fs::path run_dir = dir_ / "gpt";
  Result r =
      run(cohort() + " train " + config("tiny_gpt.yaml") + " train.steps=30 train.log_every=1 " +
          "model.dim=32 model.layers=1 model.context=16 eval.every_steps=30 eval.max_batches=2 " +
          "schedule.warmup_steps=5 optimizer.lr=0.01 logging.dir=" + run_dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  auto m = metrics(run_dir);
  double first = m.front()["loss"], last = 0;
  for (auto& rec : m)
    if (rec.contains("loss") && !rec.contains("event")) last = rec["loss"];
  EXPECT_LT(last, first) << r.output;
  EXPECT_NEAR(first, std::log(256.0), 0.5);  // an untrained byte model is near uniform
}

// configs/gpt2_124m.yaml with GPT-2's vocabulary (the shape shrunk to fit a CPU test): synthetic
// tokens by default, llm.c token files with a separate validation file; the loss starts near
// log(50257) and falls on a file that repeats itself.
TEST_F(TrainCli, Gpt2ConfigTrainsOnSyntheticAndTokenFiles) {
  const std::string small =
      " model.layers=1 model.dim=32 model.heads=2 model.context=16 data.batch_size=4 "
      "train.log_every=10 eval.every_steps=0 eval.max_batches=2 schedule.warmup_steps=0 "
      "optimizer.lr=0.01 ";
  Result syn = run(cohort() + " train " + config("gpt2_124m.yaml") + small +
                   "train.steps=10 logging.dir=" + (dir_ / "syn").string());
  ASSERT_EQ(syn.code, 0) << syn.output;
  auto m = metrics(dir_ / "syn");
  EXPECT_NEAR(m.front()["loss"].get<double>(), std::log(50257.0), 0.5) << syn.output;

  // A token file that repeats 64 tokens from the top of the vocabulary.
  std::vector<int32_t> header(256, 0);
  std::vector<uint16_t> tokens;
  for (int i = 0; i < 4096; ++i) tokens.push_back(static_cast<uint16_t>(50257 - 64 + i % 64));
  header[0] = 20240520;
  header[1] = 1;
  header[2] = static_cast<int32_t>(tokens.size());
  for (const char* name : {"train.bin", "val.bin"}) {
    std::ofstream f(dir_ / name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(header.data()), 1024);
    f.write(reinterpret_cast<const char*>(tokens.data()),
            static_cast<std::streamsize>(tokens.size() * 2));
  }
  Result tok = run(cohort() + " train " + config("gpt2_124m.yaml") + small +
                   "train.steps=60 data.dataset=tokens data.path=" + (dir_ / "train.bin").string() +
                   " data.val_path=" + (dir_ / "val.bin").string() +
                   " logging.dir=" + (dir_ / "tok").string());
  ASSERT_EQ(tok.code, 0) << tok.output;
  m = metrics(dir_ / "tok");
  double first = m.front()["loss"], last = 0;
  for (auto& rec : m)
    if (rec.contains("loss") && !rec.contains("event")) last = rec["loss"];
  EXPECT_LT(last, first - 2.0) << tok.output;
  EXPECT_NE(tok.output.find("test_acc"), std::string::npos) << tok.output;

  // A file that is not a token file: exit code 3 and one sentence naming it.
  Result bad = run(cohort() + " train " + config("gpt2_124m.yaml") + small +
                   "train.steps=1 data.dataset=tokens data.path=" + config("gpt2_124m.yaml") +
                   " logging.dir=" + (dir_ / "bad").string());
  EXPECT_EQ(bad.code, 3) << bad.output;
  EXPECT_NE(bad.output.find("token file " + config("gpt2_124m.yaml") +
                            " is shorter than llm.c's 1024-byte header"),
            std::string::npos)
      << bad.output;
}

// train.steps wins over train.epochs: a run of more steps than one epoch has goes on into the
// next epochs instead of stopping at the end of train.epochs.
TEST_F(TrainCli, StepsBeyondOneEpochRunIntoTheNextEpochs) {
  const fs::path text = dir_ / "small.txt";
  {
    std::ofstream f(text);
    for (int i = 0; i < 20; ++i) f << "the quick brown fox jumps over the lazy dog. ";
  }
  fs::path run_dir = dir_ / "steps";
  // About 900 bytes in windows of 16, 8 per batch: a handful of steps per epoch.
  Result r = run(cohort() + " train " + config("tiny_gpt.yaml") + " data.path=" + text.string() +
                 " train.epochs=1 train.steps=40 train.log_every=40 data.batch_size=8 " +
                 "model.dim=16 model.layers=1 model.heads=2 model.context=16 eval.every_steps=0 " +
                 "eval.max_batches=1 logging.dir=" + run_dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("summary: steps 40 "), std::string::npos) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(step 40/40 epoch (\d+))"))) << r.output;
  EXPECT_GT(std::stoi(m[1]), 1) << r.output;
}

// TensorBoard events are read back by TensorBoard itself and checked against metrics.jsonl; the
// timeline must be valid Chrome-trace JSON with one span of each phase per step.
TEST_F(TrainCli, TensorBoardEventsAndTimelineRecordTheRun) {
  fs::path run_dir = dir_ / "tb";
  Result r = run(cohort() + " train " + config("tiny_gpt.yaml") +
                 " train.steps=12 train.log_every=4 model.dim=32 model.layers=1 model.context=16 " +
                 "eval.every_steps=12 eval.max_batches=2 logging.tensorboard=true " +
                 "logging.timeline=true logging.dir=" + run_dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  int event_files = 0;
  for (const auto& e : fs::directory_iterator(run_dir))
    event_files += e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  ASSERT_EQ(event_files, 1);
  const auto tb = cohort::test::read_tensorboard(run_dir);
  EXPECT_EQ(tb.file_version, 2.0);
  const auto& scalars = tb.values;
  int losses = 0;
  for (const auto& m : metrics(run_dir)) {
    if (m.contains("event") && m["event"] == "eval") {
      EXPECT_FLOAT_EQ(scalars.at({"eval/test_loss", m["step"]}), m["test_loss"].get<double>());
    } else if (!m.contains("event")) {
      EXPECT_FLOAT_EQ(scalars.at({"train/loss", m["step"]}), m["loss"].get<double>());
      EXPECT_FLOAT_EQ(scalars.at({"train/lr", m["step"]}), m["lr"].get<double>());
      EXPECT_TRUE(tb.has("train/samples_per_s", m["step"]));
      EXPECT_TRUE(tb.has("step_time_ms/rank_0", m["step"]));
      ++losses;
    }
  }
  EXPECT_EQ(losses, 3);

  std::ifstream tf(run_dir / "timeline.json");
  auto trace = nlohmann::json::parse(tf);
  std::map<std::string, int> spans;
  for (const auto& e : trace) {
    if (e["ph"] != "X") continue;
    EXPECT_GE(e["dur"].get<int64_t>(), 0);
    ++spans[e["name"]];
  }
  for (const char* phase : {"data", "forward", "backward", "optimizer"})
    EXPECT_EQ(spans[phase], 12) << phase;
  EXPECT_EQ(spans["eval"], 1);
  EXPECT_EQ(spans["checkpoint"], 1);
}

TEST_F(TrainCli, ConfigErrorsExitWithCode2AndOneSentence) {
  std::ofstream(dir_ / "bad.yaml") << "model:\n  type: mlp\noptimizer:\n  lr: fast\n";
  Result r = run(cohort() + " train " + (dir_ / "bad.yaml").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("bad.yaml:4: optimizer.lr must be a number, got 'fast'"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;

  r = run(cohort() + " train " + config("fashion_mnist_mlp.yaml") + " data.path=/nonexistent");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("data.path /nonexistent is not a directory"), std::string::npos)
      << r.output;

  r = run(cohort() + " train");
  EXPECT_EQ(r.code, 2) << r.output;
  r = run(cohort() + " frobnicate");
  EXPECT_EQ(r.code, 2) << r.output;
}

// model.init_from: weights from a safetensors file (here a checkpoint of another run) replace the
// seeded initialisation, so two runs with different seeds start alike; a missing file or one that
// does not fit the model is a config error.
TEST_F(TrainCli, InitFromReplacesTheSeededInitialisation) {
  const std::string gpt = " train " + config("tiny_gpt.yaml") +
                          " model.dim=32 model.layers=1 model.context=16 data.shuffle=false"
                          " train.log_every=1 eval.every_steps=0 eval.max_batches=1 ";
  Result source = run(cohort() + gpt + "train.steps=2 logging.dir=" + (dir_ / "src").string());
  ASSERT_EQ(source.code, 0) << source.output;
  const fs::path weights = dir_ / "src" / "checkpoints" / "step_2" / "model.safetensors";
  ASSERT_TRUE(fs::exists(weights));
  auto first_loss = [&](const std::string& name, const std::string& extra) {
    Result r =
        run(cohort() + gpt + "train.steps=1 " + extra + " logging.dir=" + (dir_ / name).string());
    EXPECT_EQ(r.code, 0) << r.output;
    auto m = metrics(dir_ / name);
    return m.empty() ? -1.0 : m.front()["loss"].get<double>();
  };
  const std::string init = "model.init_from=" + weights.string();
  const double a = first_loss("a", "seed=1 " + init), b = first_loss("b", "seed=2 " + init);
  const double fresh = first_loss("c", "seed=1");
  EXPECT_EQ(a, b) << "runs that start from the same weights differ";
  EXPECT_NE(a, fresh) << "the weights file made no difference";

  Result r = run(cohort() + gpt + "model.init_from=/nonexistent.safetensors");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("model.init_from /nonexistent.safetensors is not a readable file"),
            std::string::npos)
      << r.output;
  r = run(cohort() + gpt + "model.dim=64 " + init + " logging.dir=" + (dir_ / "d").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("does not fit this model"), std::string::npos) << r.output;
}

// Mixed precision is for GPUs: asking for it on the CPU exits with code 2 and says so.
// fp16 on the CPU is a config error; bf16 on the CPU trains where the CPU has AVX512-BF16 (its
// GEMMs in bfloat16, tested against float64 in core_tensor_test) and is a config error naming
// what is missing elsewhere.
TEST_F(TrainCli, SixteenBitPrecisionOnTheCpu) {
  Result r = run(cohort() + " train " + config("tiny_gpt.yaml") +
                 " device=cpu precision=fp16 logging.dir=" + (dir_ / "p").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("precision fp16 runs on a GPU, but this worker trains on cpu"),
            std::string::npos)
      << r.output;
  r = run(cohort() + " train " + config("tiny_gpt.yaml") + " precision=fp8");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("precision"), std::string::npos) << r.output;
  r = run(cohort() + " train " + config("tiny_gpt.yaml") +
          " device=cpu precision=bf16 train.steps=40 train.log_every=10 model.layers=1 "
          "model.dim=64 model.context=32 eval.max_batches=2 eval.batch_size=64 logging.dir=" +
          (dir_ / "b").string());
  if (!cohort::core::cpu::bf16_gemm_supported()) {
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("precision bf16 on the CPU needs AVX512-BF16"), std::string::npos)
        << r.output;
    return;
  }
  ASSERT_EQ(r.code, 0) << r.output;
  // Byte-level text: from log(256) = 5.5 down, as in float32.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(step 40/40 epoch \d+ loss ([0-9.]+))")))
      << r.output;
  EXPECT_LT(std::stod(m[1]), 4.0) << r.output;
}

TEST_F(TrainCli, DivergenceIsATrainingErrorWithCode1) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP()
        << "Debian's dataset-fashion-mnist is not installed (scripts/install-deps.sh installs it)";
  Result r = run(
      cohort() + " train " + config("fashion_mnist_mlp.yaml") +
      " optimizer.lr=1e6 train.steps=20 train.log_every=1 logging.dir=" + (dir_ / "div").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("training diverged"), std::string::npos) << r.output;
}

}  // namespace

namespace {

// An interrupted run resumed with `resume: auto` ends with exactly the parameters of a run that was
// never interrupted (same data order, optimiser state and RNG).
TEST_F(TrainCli, ResumeAutoEqualsUninterruptedRun) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP()
        << "Debian's dataset-fashion-mnist is not installed (scripts/install-deps.sh installs it)";
  const std::string common =
      " train " + config("fashion_mnist_mlp.yaml") +
      " model.hidden=[64] data.batch_size=32 threads=1 train.log_every=10 eval.max_batches=1"
      " checkpoint.every_steps=10 checkpoint.keep=2 ";
  fs::path a = dir_ / "a", b = dir_ / "b";
  Result ra = run(cohort() + common + "train.steps=60 logging.dir=" + a.string());
  ASSERT_EQ(ra.code, 0) << ra.output;
  // "Crash" after 25 steps (the final checkpoint of a short run stands in for the last periodic
  // one), leave a half-written checkpoint behind, then resume.
  Result rb1 = run(cohort() + common + "train.steps=25 logging.dir=" + b.string());
  ASSERT_EQ(rb1.code, 0) << rb1.output;
  fs::create_directories(b / "checkpoints" / ".step_30.tmp-99999");
  Result rb2 =
      run(cohort() + common + "train.steps=60 checkpoint.resume=auto logging.dir=" + b.string());
  ASSERT_EQ(rb2.code, 0) << rb2.output;
  EXPECT_NE(rb2.output.find("resumed from"), std::string::npos) << rb2.output;
  EXPECT_NE(rb2.output.find("step 25"), std::string::npos) << rb2.output;

  std::ifstream fa(a / "checkpoints" / "step_60" / "model.safetensors", std::ios::binary);
  std::ifstream fb(b / "checkpoints" / "step_60" / "model.safetensors", std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(fa)), {}),
      sb((std::istreambuf_iterator<char>(fb)), {});
  ASSERT_FALSE(sa.empty());
  EXPECT_TRUE(sa == sb) << "parameters differ after resume";
  EXPECT_FALSE(fs::exists(b / "checkpoints" / ".step_30.tmp-99999"));
  std::ifstream m(b / "metrics.jsonl");
  int summaries = 0;
  for (std::string line; std::getline(m, line);)
    summaries += line.find("\"summary\"") != std::string::npos;
  EXPECT_EQ(summaries, 2) << "the resumed run appends to metrics.jsonl";
}

// SIGUSR1 (Slurm before a time limit) or SIGTERM (a launcher stopping workers): the step finishes,
// a checkpoint is written, the exit code is 128 + signal, and resuming gives the same parameters
// as a run that was never stopped.
TEST_F(TrainCli, SigusrWritesACheckpointAndResumingMatchesAnUnstoppedRun) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP()
        << "Debian's dataset-fashion-mnist is not installed (scripts/install-deps.sh installs it)";
  const std::string common =
      " train " + config("fashion_mnist_mlp.yaml") +
      " model.hidden=[64] data.batch_size=32 threads=1 train.log_every=1 eval.max_batches=1"
      " checkpoint.every_steps=1000 train.steps=400 ";
  fs::path a = dir_ / "a", b = dir_ / "b";
  Result ra = run(cohort() + common + "logging.dir=" + a.string());
  ASSERT_EQ(ra.code, 0) << ra.output;
  // Stop run b once it is past step 20.
  const std::string stopped =
      "sh -c '" + cohort() + common + "logging.dir=" + b.string() +
      " & p=$!; while kill -0 $p 2>/dev/null && ! grep -q \"step\\\":20}\" " +
      (b / "metrics.jsonl").string() +
      " 2>/dev/null; do sleep 0.01; done; kill -USR1 $p; wait $p; echo exit=$?'";
  Result rb1 = run(stopped);
  EXPECT_NE(rb1.output.find("exit=138"), std::string::npos) << rb1.output;  // 128 + SIGUSR1
  EXPECT_NE(rb1.output.find("SIGUSR1 stopped training after step "), std::string::npos)
      << rb1.output;
  Result rb2 = run(cohort() + common + "checkpoint.resume=auto logging.dir=" + b.string());
  ASSERT_EQ(rb2.code, 0) << rb2.output;
  EXPECT_NE(rb2.output.find("resumed from"), std::string::npos) << rb2.output;
  std::ifstream fa(a / "checkpoints" / "step_400" / "model.safetensors", std::ios::binary);
  std::ifstream fb(b / "checkpoints" / "step_400" / "model.safetensors", std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(fa)), {}),
      sb((std::istreambuf_iterator<char>(fb)), {});
  ASSERT_FALSE(sa.empty());
  EXPECT_TRUE(sa == sb) << "parameters differ after a stop and resume";
}

}  // namespace
