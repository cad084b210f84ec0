// What users expect of a trainer besides models and data: gradient accumulation (equal to the
// larger batch), a wall-clock budget (train.max_time), early stopping, tokens/s and perplexity for
// language models, `cohort generate`, Slurm's usual sbatch options, and help that names things.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "cohort/config.h"
#include "core/io/checkpoint.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using cohort::test::run_command;

constexpr int kRunLimit = 300;

class TrainOptions : public cohort::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing (scripts/install-deps.sh)";
  }
  std::string mlp(const std::string& run, const std::string& extra) const {
    return std::string(COHORT_BINARY) + " train " + COHORT_SOURCE_DIR +
           "/configs/fashion_mnist_mlp.yaml model.hidden=[32] threads=1 train.log_every=5 "
           "eval.max_batches=1 distributed.timeout_s=60 logging.dir=" +
           (dir_ / run).string() + " " + extra;
  }
  std::vector<nlohmann::json> metrics(const std::string& run) const {
    std::vector<nlohmann::json> out;
    std::istringstream lines(read_text(dir_ / run / "metrics.jsonl"));
    for (std::string line; std::getline(lines, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  }
};

// Two batches of 16 accumulated are one batch of 32 (one process), and so are 2 ranks of 8 x 2
// (DDP reduces once per step). float64 and 1e-9, as the DDP equivalence tests.
TEST_F(TrainOptions, GradientAccumulationEqualsTheLargerBatch) {
  const std::string common = "precision=fp64 train.steps=10 ";
  auto one = run_command(mlp("one", common + "data.batch_size=32"), kRunLimit);
  ASSERT_EQ(one.code, 0) << one.output;
  auto acc =
      run_command(mlp("acc", common + "data.batch_size=16 train.grad_accum_steps=2"), kRunLimit);
  ASSERT_EQ(acc.code, 0) << acc.output;
  auto ddp = run_command(std::string(COHORT_BINARY) + " launch --nproc-per-node 2 -- " +
                             mlp("ddp", common + "data.batch_size=8 train.grad_accum_steps=2"),
                         kRunLimit);
  ASSERT_EQ(ddp.code, 0) << ddp.output;
  const auto ref = cohort::test::final_model(dir_ / "one");
  cohort::test::expect_same_model(cohort::test::final_model(dir_ / "acc"), ref, "accumulated",
                                  1e-9);
  cohort::test::expect_same_model(cohort::test::final_model(dir_ / "ddp"), ref,
                                  "2 ranks accumulated", 1e-9);
  // Without accumulation a batch of 16 is another model: the test can fail.
  auto half = run_command(mlp("half", common + "data.batch_size=16"), kRunLimit);
  ASSERT_EQ(half.code, 0) << half.output;
  const auto h = cohort::test::final_model(dir_ / "half").at("l1.weight").contiguous();
  const auto r = ref.at("l1.weight").contiguous();
  double diff = 0;
  for (int64_t i = 0; i < r.numel(); ++i)
    diff = std::max(diff, std::abs(h.data_ptr<double>()[i] - r.data_ptr<double>()[i]));
  EXPECT_GT(diff, 1e-6);
}

// A run with far more steps than its budget stops by itself, exit 0, with a checkpoint of the step
// it names, and continues from there when asked.
TEST_F(TrainOptions, MaxTimeStopsWithACheckpointInsideTheBudget) {
  auto r = run_command(
      mlp("r", "train.steps=100000000 train.max_time=3s checkpoint.every_steps=100000000"),
      kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.output, m, std::regex(R"(train.max_time 3s: stopped after step (\d+) with a checkpoint)")))
      << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "r" / "checkpoints" / ("step_" + m[1].str()))) << r.output;
  auto more = run_command(
      mlp("r", "train.steps=" + std::to_string(std::stoll(m[1]) + 3) + " checkpoint.resume=auto"),
      kRunLimit);
  ASSERT_EQ(more.code, 0) << more.output;
  EXPECT_NE(more.output.find("(step " + m[1].str() + ","), std::string::npos) << more.output;
  auto bad = run_command(mlp("b", "train.max_time=1h30"));
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("train.max_time must be a duration such as"), std::string::npos);
}

// Patience 2 with an improvement nobody can make: the evaluations at steps 5, 10 and 15, then a
// stop with a checkpoint at 15.
TEST_F(TrainOptions, EarlyStoppingStopsAfterPatienceEvaluationsWithoutGain) {
  auto r = run_command(mlp("r",
                           "train.steps=1000 eval.every_steps=5 "
                           "eval.early_stopping.metric=test_acc "
                           "eval.early_stopping.patience=2 eval.early_stopping.min_delta=1"),
                       kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("early stopping: test_acc has not improved by more than 1 for 2 "
                          "evaluations (best "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("summary: steps 15 "), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "r" / "checkpoints" / "step_15"));
  // test_loss, which does fall, runs to the end.
  auto loss = run_command(mlp("l",
                              "train.steps=20 eval.every_steps=5 "
                              "eval.early_stopping.metric=test_loss"),
                          kRunLimit);
  ASSERT_EQ(loss.code, 0) << loss.output;
  EXPECT_NE(loss.output.find("summary: steps 20 "), std::string::npos) << loss.output;
}

// A byte-level GPT reports tokens/s and perplexity (= exp(test loss)), and `cohort generate`
// continues a prompt from its checkpoint, the same text for the same seed.
TEST_F(TrainOptions, LanguageModelsReportPerplexityAndGenerate) {
  const std::string gpt = std::string(COHORT_BINARY) + " train " + COHORT_SOURCE_DIR +
                          "/configs/tiny_gpt.yaml model.layers=1 model.dim=32 model.heads=2 "
                          "model.context=16 data.batch_size=8 train.steps=30 train.log_every=10 "
                          "eval.max_batches=2 eval.batch_size=32 logging.dir=" +
                          (dir_ / "g").string();
  auto r = run_command(gpt, kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find(" tokens_per_s "), std::string::npos) << r.output;
  const auto m = metrics("g");
  const auto& summary = m.back();
  ASSERT_EQ(summary["event"], "summary");
  EXPECT_NEAR(summary["perplexity"].get<double>(), std::exp(summary["test_loss"].get<double>()),
              1e-6);
  EXPECT_NEAR(summary["tokens_per_s"].get<double>(), summary["samples_per_s"].get<double>() * 16,
              1e-3);
  const std::string generate = std::string(COHORT_BINARY) + " generate " + COHORT_SOURCE_DIR +
                               "/configs/tiny_gpt.yaml model.layers=1 model.dim=32 model.heads=2 "
                               "model.context=16 logging.dir=" +
                               (dir_ / "g").string() + " prompt=Licen max_new_tokens=40 seed=7";
  auto a = run_command(generate), b = run_command(generate);
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
  EXPECT_EQ(a.output.rfind("Licen", 0), 0u) << a.output;
  EXPECT_EQ(a.output.size(), 5u + 40u + 1u) << a.output;  // prompt, 40 bytes, newline
  auto other = run_command(generate.substr(0, generate.size() - 1) + "8");
  EXPECT_NE(other.output, a.output);
  // A checkpoint that does not fit, and a vocabulary without text, are named.
  auto wrong = run_command(generate + " model.dim=64");
  EXPECT_EQ(wrong.code, 2) << wrong.output;
  EXPECT_NE(wrong.output.find("does not fit this config's model"), std::string::npos)
      << wrong.output;
  auto mlp = run_command(std::string(COHORT_BINARY) + " generate " + COHORT_SOURCE_DIR +
                         "/configs/fashion_mnist_mlp.yaml prompt=x");
  EXPECT_EQ(mlp.code, 2) << mlp.output;
  EXPECT_NE(mlp.output.find("cohort generate needs a model over tokens"), std::string::npos)
      << mlp.output;
  auto tokens = run_command(generate + " model.vocab=512 data.dataset=synthetic");
  EXPECT_EQ(tokens.code, 2) << tokens.output;
  EXPECT_NE(tokens.output.find("give prompt_tokens=ID,ID,..."), std::string::npos) << tokens.output;
}

class Cli : public ::testing::Test {};

TEST_F(Cli, SlurmSubmitPassesTheUsualSbatchOptions) {
  const std::string submit = std::string(COHORT_BINARY) + " slurm submit " + COHORT_SOURCE_DIR +
                             "/configs/fashion_mnist_mlp.yaml --dry-run ";
  auto r = run_command(submit +
                       "--account ml --qos high --mem 32G --constraint a100 "
                       "--sbatch-arg=--exclusive --sbatch-arg=--mail-type=END threads=4");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* line :
       {"#SBATCH --cpus-per-task=4\n", "#SBATCH --account=ml\n", "#SBATCH --qos=high\n",
        "#SBATCH --mem=32G\n", "#SBATCH --constraint=a100\n", "#SBATCH --exclusive\n",
        "#SBATCH --mail-type=END\n", "srun --label "})
    EXPECT_NE(r.output.find(line), std::string::npos) << line << " missing from:\n" << r.output;
  EXPECT_NE(r.output.find("'threads=4'"), std::string::npos) << r.output;
  auto explicit_cpus = run_command(submit + "--cpus-per-task 8 threads=4");
  EXPECT_NE(explicit_cpus.output.find("#SBATCH --cpus-per-task=8\n"), std::string::npos);
  // A value that would end the #SBATCH line and start a command is refused.
  auto bad = run_command(std::string("sh -c \"") + submit + "--sbatch-arg='--x\nrm -rf /'\"");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("must be one sbatch option on one line"), std::string::npos)
      << bad.output;
}

TEST_F(Cli, HelpShowsTheProgramFormsAndUnknownCommandsAreNamed) {
  auto help = run_command(std::string(COHORT_BINARY) + " launch --help");
  EXPECT_EQ(help.code, 0) << help.output;
  EXPECT_NE(help.output.find("cohort launch [OPTIONS] --\nPROGRAM [ARGS...]"), std::string::npos)
      << help.output;
  auto unknown = run_command(std::string(COHORT_BINARY) + " trian configs/x.yaml");
  EXPECT_EQ(unknown.code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("cohort: unknown command 'trian' (commands: train, generate"),
            std::string::npos)
      << unknown.output;
}

// `cohort env` describes the build and the machine, and the job it would join: here, under the
// variables cohort launch sets, rank 1 of 2.
TEST_F(Cli, EnvDescribesTheBuildTheMachineAndTheJob) {
  auto r = run_command(std::string(COHORT_BINARY) + " env");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* line : {"cohort ", "built with: cuda ", "gpus",
                           "cpu: ", "cpu vector units: avx2 ", "blas: ", "job: none detected"})
    EXPECT_NE(r.output.find(line), std::string::npos) << line << " in\n" << r.output;
  // The modules this build has, each loading with its library's version or saying what it lacks.
  const std::pair<bool, std::pair<const char*, const char*>> modules[] = {
      {COHORT_USE_CUDA, {"  cuda: ", "cuDNN "}},
      {COHORT_USE_NCCL, {"  nccl: ", "NCCL "}},
      {COHORT_USE_MPI, {"  mpi: ", "MPI"}},
      {COHORT_USE_GRPC, {"  grpc: ", "gRPC 1."}}};
  for (const auto& [built, m] : modules) {
    const size_t at = r.output.find(m.first);
    ASSERT_EQ(at != std::string::npos, built) << m.first << " in\n" << r.output;
    if (!built) continue;
    const std::string line = r.output.substr(at, r.output.find('\n', at) - at);
    EXPECT_TRUE(line.find(std::string("loads: ")) != std::string::npos
                    ? line.find(m.second) != std::string::npos
                    : line.find("does not load: ") != std::string::npos)
        << line;
  }
  r = run_command(
      "env COHORT_RANK=1 COHORT_WORLD_SIZE=2 COHORT_LOCAL_RANK=1 "
      "COHORT_LOCAL_WORLD_SIZE=2 COHORT_STORE=127.0.0.1:1 " +
      std::string(COHORT_BINARY) + " env");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("job: rank 1 of 2 (local rank 1 of 2)"), std::string::npos) << r.output;
}

}  // namespace
