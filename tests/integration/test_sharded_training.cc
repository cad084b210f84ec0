// ZeRO-2 and FSDP as users run them (`cohort launch` and mpirun): they end where DDP ends for the
// CNN, a config model and a small GPT; a rank's model state shrinks with the world size (measured
// by every rank and recorded in metrics.jsonl); sharded checkpoints reshard across strategies and
// world sizes; a killed rank under fsdp is restarted into the unbroken result; bad settings are one
// sentence with exit code 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cohort/config.h"
#include "core/io/checkpoint.h"
#include "core/io/checkpoint_detail.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::expect_same_model;
using cohort::test::read_text;
using cohort::test::run_command;

const char* kData = "/usr/share/datasets/fashion-mnist";
const char* kText = "/usr/share/common-licenses/GPL-3";
constexpr int kRunLimit = 200;
// In float64 a reordered reduction moves the parameters by ~1e-14 after 20 steps; a wrong
// average, a stale shard or a lost gradient moves them by 1e-3 or more.
constexpr double kFp64Tolerance = 1e-9;

class ShardedTrain : public cohort::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    if (!fs::exists(std::string(kData) + "/train-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing (scripts/install-deps.sh)";
  }
  // `cohort train` of `model` (cnn, sequential or gpt) for `steps` steps, per-rank batch `batch`.
  std::string train(const std::string& model, int64_t batch, const std::string& run,
                    const std::string& extra = "", int steps = 20) const {
    const std::string config = model == "gpt"
                                   ? std::string(COHORT_SOURCE_DIR) +
                                         "/configs/tiny_gpt.yaml data.path=" + kText +
                                         " eval.every_steps=0 model.dim=64 model.context=32"
                                   : std::string(COHORT_SOURCE_DIR) + "/configs/fashion_mnist_" +
                                         model + ".yaml eval.batch_size=500";
    return std::string(COHORT_BINARY) + " train " + config +
           " train.steps=" + std::to_string(steps) + " data.batch_size=" + std::to_string(batch) +
           " train.log_every=5 eval.max_batches=1 distributed.timeout_s=60 precision=fp64" +
           " logging.dir=" + (dir_ / run).string() + " " + extra;
  }
  std::string launch(int n, const std::string& args, const std::string& flags = "") const {
    return cohort::test::launch_command(n, args, flags);
  }
  std::string mpirun(int n, const std::string& args) const {
    return cohort::test::mpirun_command(n, args);
  }
  cohort::core::io::TensorMap final_model(const std::string& run) const {
    return cohort::test::final_model(dir_ / run);
  }
  // Each rank's {"event":"rank"} record.
  std::vector<nlohmann::json> ranks(const std::string& run) const {
    std::vector<nlohmann::json> out;
    std::istringstream lines(read_text(dir_ / run / "metrics.jsonl"));
    for (std::string line; std::getline(lines, line);) {
      auto j = nlohmann::json::parse(line);
      if (j.value("event", "") == "rank") out.push_back(j);
    }
    return out;
  }
};

TEST_F(ShardedTrain, ZeroTwoAndFsdpEndWhereDdpEnds) {
  for (std::string model : {"cnn", "sequential", "gpt"}) {
    for (int n : {2, 4}) {
      const int64_t b = (model == "gpt" ? 8 : 32) / n;
      const std::string ddp = model + "_ddp_" + std::to_string(n);
      auto r = run_command(launch(n, train(model, b, ddp)), kRunLimit);
      ASSERT_EQ(r.code, 0) << r.output;
      const auto expected = final_model(ddp);
      for (std::string strategy : {"zero2", "fsdp"}) {
        const std::string run = model + "_" + strategy + "_" + std::to_string(n);
        r = run_command(launch(n, train(model, b, run, "distributed.strategy=" + strategy)),
                        kRunLimit);
        ASSERT_EQ(r.code, 0) << r.output;
        expect_same_model(final_model(run), expected, run, kFp64Tolerance);
        if (strategy == "fsdp") {
          EXPECT_NE(r.output.find("cohort: fsdp: "), std::string::npos) << r.output;
        }
      }
      if (!COHORT_USE_MPI || n != 2) continue;
      // The mpi backend: MPI's own reduce-scatter and all-gather.
      for (std::string strategy : {"zero2", "fsdp"}) {
        const std::string run = model + "_mpi_" + strategy;
        r = run_command(
            mpirun(n, train(model, b, run,
                            "distributed.backend=mpi distributed.strategy=" + strategy)),
            kRunLimit);
        ASSERT_EQ(r.code, 0) << r.output;
        expect_same_model(final_model(run), expected, run, kFp64Tolerance);
      }
    }
  }
}

// What each rank holds for the model (parameters, gradients, optimiser state) is measured from
// its tensors at the end of the run: under fsdp it falls with the world size; zero2 holds less
// than ddp, and fsdp less than zero2.
TEST_F(ShardedTrain, ModelStatePerRankShrinksWithTheWorldSize) {
  std::map<std::string, double> state;
  for (auto [strategy, n] : std::vector<std::pair<std::string, int>>{
           {"ddp", 4}, {"zero2", 4}, {"fsdp", 2}, {"fsdp", 4}}) {
    const std::string run = strategy + std::to_string(n);
    auto r = run_command(launch(n, train("gpt", 2, run, "distributed.strategy=" + strategy, 4)),
                         kRunLimit);
    ASSERT_EQ(r.code, 0) << r.output;
    const auto records = ranks(run);
    ASSERT_EQ(records.size(), static_cast<size_t>(n)) << run;
    for (const auto& j : records) {
      ASSERT_TRUE(j.contains("model_state_mb") && j.contains("peak_mem_mb")) << j.dump();
      EXPECT_GT(j["peak_mem_mb"].get<double>(), 0) << j.dump();
    }
    state[run] = records[0]["model_state_mb"].get<double>();
  }
  EXPECT_LT(state["fsdp4"], state["fsdp2"]);
  EXPECT_LT(state["fsdp4"], state["zero24"]);
  EXPECT_LT(state["zero24"], state["ddp4"]);
  // Adam's parameters, gradients and two moments, a quarter each at 4 ranks (plus padding).
  EXPECT_LT(state["fsdp4"], 0.3 * state["ddp4"]);
}

// A checkpoint written by fsdp on 4 ranks continues under ddp on 2 and in one process, one written
// by ddp on 2 under fsdp on 4, and one of zero2 on 4 (each rank writing its optimiser shards)
// under zero1 on 2: each ends where the unbroken run ends (the global batch stays 8 throughout;
// the checkpoint records the samples consumed, not the batches).
TEST_F(ShardedTrain, CheckpointsReshardAcrossStrategiesAndWorldSizes) {
  auto r =
      run_command(launch(4, train("gpt", 2, "straight", "distributed.strategy=fsdp")), kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto expected = final_model("straight");
  struct Leg {
    std::string first;   // strategy and ranks of the first 10 steps
    std::string second;  // of the last 10
  };
  auto run_leg = [&](const std::string& name, const std::string& strategy, int n, int steps,
                     const std::string& ckpt) {
    const std::string args = train(
        "gpt", 8 / n, name,
        "distributed.strategy=" + strategy + " checkpoint.every_steps=10 checkpoint.dir=" + ckpt,
        steps);
    return run_command(n == 1 ? args : launch(n, args), kRunLimit);
  };
  for (auto [first, n1, second, n2] :
       std::vector<std::tuple<std::string, int, std::string, int>>{{"fsdp", 4, "ddp", 2},
                                                                   {"fsdp", 4, "none", 1},
                                                                   {"ddp", 2, "fsdp", 4},
                                                                   {"zero2", 4, "zero1", 2}}) {
    const std::string name = first + std::to_string(n1) + "_" + second + std::to_string(n2);
    const std::string ckpt = (dir_ / name / "checkpoints").string();
    r = run_leg(name + "_a", first, n1, 10, ckpt);
    ASSERT_EQ(r.code, 0) << r.output;
    if (n1 > 1) {
      // Each rank wrote its own file.
      const cohort::core::io::CheckpointReader ck(ckpt + "/step_10");
      EXPECT_EQ(ck.world_size(), n1);
    }
    r = run_leg(name, second, n2, 20, ckpt + " checkpoint.resume=auto");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
    expect_same_model(final_model(name), expected, name, kFp64Tolerance);
  }
  // One file PyTorch loads, from the sharded checkpoint.
  const std::string step20 = (dir_ / "straight" / "checkpoints" / "step_20").string();
  r = run_command(std::string(COHORT_BINARY) + " checkpoint consolidate " + step20 + " -o " +
                  (dir_ / "whole.safetensors").string());
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_model(cohort::core::io::load_safetensors((dir_ / "whole.safetensors").string()),
                    expected, "consolidated", 0);
}

// A rank SIGKILLed after step 7 under fsdp: the job restarts, resumes from the step-5 checkpoint
// (written by both ranks) and ends with the parameters of a run nobody killed.
TEST_F(ShardedTrain, AKilledRankUnderFsdpIsRestartedIntoTheUnbrokenResult) {
  const std::string extra = "distributed.strategy=fsdp checkpoint.every_steps=5";
  auto r = run_command(launch(2, train("gpt", 4, "unbroken", extra, 12)), kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_command("env COHORT_KILL_AT_STEP=1:7 " +
                      launch(2, train("gpt", 4, "killed", extra, 12), "--max-restarts 2"),
                  kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  expect_same_model(final_model("killed"), final_model("unbroken"), "restarted run",
                    kFp64Tolerance);
}

// checkpoint.async writes from a copy taken at the step, on a background thread: every file of
// every checkpoint equals the synchronous run's byte for byte, for one writer (one process), for
// DDP (parameters sliced over the ranks) and for FSDP (every rank its own shards), and each write's
// duration is recorded beside the stall.
TEST_F(ShardedTrain, AsyncCheckpointsEqualSynchronousOnesBitForBit) {
  for (const auto& [strategy, n] :
       std::vector<std::pair<std::string, int>>{{"none", 1}, {"ddp", 2}, {"fsdp", 2}}) {
    const std::string extra = "distributed.strategy=" + strategy +
                              " checkpoint.every_steps=4 checkpoint.keep=5 checkpoint.async=";
    std::map<bool, std::string> runs;
    for (bool async : {false, true}) {
      const std::string run = strategy + (async ? "_async" : "_sync");
      runs[async] = run;
      const std::string cmd = train("gpt", 8 / n, run, extra + (async ? "true" : "false"), 12);
      auto r = run_command(n == 1 ? cmd : launch(n, cmd), kRunLimit);
      ASSERT_EQ(r.code, 0) << r.output;
    }
    for (int step : {4, 8, 12}) {
      const fs::path sync = dir_ / runs[false] / "checkpoints" / ("step_" + std::to_string(step));
      const fs::path async = dir_ / runs[true] / "checkpoints" / ("step_" + std::to_string(step));
      ASSERT_TRUE(fs::exists(async)) << async;
      int files = 0;
      for (const auto& f : fs::directory_iterator(sync)) {
        if (f.path().filename() == "manifest.json") continue;
        ++files;
        EXPECT_EQ(read_text(async / f.path().filename()), read_text(f.path()))
            << strategy << ": " << async / f.path().filename() << " differs from " << f.path();
      }
      EXPECT_EQ(files, n == 1 ? 2 : n) << strategy << " step " << step;
      // The manifests differ only in the run's id and config (its directory, checkpoint.async)
      // and so in their own checksum: the position, RNG state, files and checksums are the same.
      auto manifest = [](const fs::path& dir) {
        auto m = nlohmann::json::parse(read_text(dir / "manifest.json"));
        for (const char* key : {"run_id", "config", "manifest_sha256"}) m.erase(key);
        return m.dump();
      };
      EXPECT_EQ(manifest(async), manifest(sync)) << strategy << " step " << step;
      cohort::core::io::load_checkpoint(async.string());  // verifies every checksum
    }
    int stalls = 0, writes = 0;
    std::istringstream lines(read_text(dir_ / runs[true] / "metrics.jsonl"));
    for (std::string line; std::getline(lines, line);) {
      const auto j = nlohmann::json::parse(line);
      stalls += j.value("event", "") == "checkpoint" && j.value("async", false);
      writes += j.value("event", "") == "checkpoint_written" && j.value("seconds", -1.0) > 0;
    }
    EXPECT_EQ(stalls, 3) << strategy;
    EXPECT_EQ(writes, 3) << strategy;
  }
}

// Rank 0 SIGKILLed in the middle of the background write of step 8's checkpoint (its own file
// written, nothing renamed into place) while training goes on: the restarted job finds step 4
// the newest valid checkpoint, resumes from it and ends where an unbroken run ends.
TEST_F(ShardedTrain, AKillDuringAnAsyncCheckpointResumesFromThePreviousOne) {
  const std::string extra = "checkpoint.every_steps=4 checkpoint.async=true";
  auto r = run_command(launch(2, train("gpt", 4, "unbroken", extra, 12)), kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_command("env COHORT_KILL_IN_CHECKPOINT=0:8 " +
                      launch(2, train("gpt", 4, "killed", extra, 12), "--max-restarts 1"),
                  kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("SIGKILL"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checkpoints/step_4 (step 4"), std::string::npos) << r.output;
  expect_same_model(final_model("killed"), final_model("unbroken"), "restarted run",
                    kFp64Tolerance);
}

TEST_F(ShardedTrain, BadSettingsAndMismatchedCheckpointsAreOneSentence) {
  // A unit that names no module.
  auto r =
      run_command(launch(2, train("gpt", 4, "unit",
                                  "distributed.strategy=fsdp distributed.fsdp.unit=blocks.*", 2)),
                  kRunLimit);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("distributed.fsdp.unit: FSDP unit 'blocks.*' names no module of the "
                          "model (its top-level modules: tok, pos, h0, h1, ln_f"),
            std::string::npos)
      << r.output;
  // Units that split weights the model ties (the GPT's head is its token embedding).
  r = run_command(
      launch(2, train("gpt", 4, "tied", "distributed.strategy=fsdp distributed.fsdp.unit=tok", 2)),
      kRunLimit);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("distributed.fsdp.unit: a tensor of shape"), std::string::npos)
      << r.output;
  // The unit key with another strategy.
  r = run_command(train("gpt", 4, "ddpunit", "distributed.fsdp.unit=h0", 2), kRunLimit);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("distributed.fsdp.unit is for distributed.strategy fsdp"),
            std::string::npos)
      << r.output;

  // A sharded checkpoint of a wider model, its recorded config removed (as a hand-made or
  // foreign checkpoint would have none) and the manifest re-signed: the shapes disagree.
  const std::string ckpt = (dir_ / "wide" / "checkpoints").string();
  r = run_command(
      launch(2, train("gpt", 4, "wide",
                      "model.dim=96 distributed.strategy=fsdp checkpoint.dir=" + ckpt, 2)),
      kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path manifest = fs::path(ckpt) / "step_2" / "manifest.json";
  auto m = nlohmann::json::parse(read_text(manifest));
  m.erase("config");
  m["manifest_sha256"] = cohort::core::io::detail::manifest_digest(m);
  std::ofstream(manifest) << m.dump();
  r = run_command(
      launch(2, train("gpt", 4, "narrow",
                      "distributed.strategy=fsdp checkpoint.resume=" + ckpt + "/step_2", 4)),
      kRunLimit);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("holds tok.weight with shape [256, 96] but this model's is [256, 64]"),
            std::string::npos)
      << r.output;
}

}  // namespace
