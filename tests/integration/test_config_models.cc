// Models written in the config (model.type sequential and graph) as users run them: they train on
// Fashion-MNIST, print their layers, refuse bad layer lists with one sentence, synchronise batch
// statistics across ranks (SyncBatchNorm) exactly, and move to and from PyTorch: weights trained in
// PyTorch load through model.init_from and Cohort reports PyTorch's accuracy for them, and Cohort's
// checkpoints load into the same nn.Sequential (tests/torch_interop.py, Debian's python3-torch).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/autograd/grad_mode.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/ops/ops.h"
#include "test_util.h"
#include "trainer/model_builder.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::expect_same_model;
using cohort::test::read_text;
using cohort::test::run_command;

const char* kData = "/usr/share/datasets/fashion-mnist";
constexpr int kRunLimit = 300;

class ConfigModels : public cohort::test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    if (!fs::exists(std::string(kData) + "/train-images-idx3-ubyte.gz"))
      GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing (scripts/install-deps.sh)";
  }
  std::string cohort(const std::string& args) const {
    return std::string(COHORT_BINARY) + " " + args;
  }
  std::string config(const std::string& name) const {
    return std::string(COHORT_SOURCE_DIR) + "/configs/" + name;
  }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  // The last line of output that starts with `prefix`, parsed for "key value" pairs.
  static double field(const std::string& output, const std::string& key) {
    std::smatch m;
    const std::regex re(key + "[ :=]+([0-9.eE+-]+)");
    std::string last;
    for (auto it = std::sregex_iterator(output.begin(), output.end(), re);
         it != std::sregex_iterator(); ++it)
      last = (*it)[1];
    EXPECT_FALSE(last.empty()) << "no '" << key << "' in:\n" << output;
    return last.empty() ? NAN : std::stod(last);
  }
  static std::string torch_interop(const std::string& args) {
    return std::string("/usr/bin/python3 ") + COHORT_SOURCE_DIR + "/tests/torch_interop.py " + args;
  }
};

TEST_F(ConfigModels, SequentialCnnAndResidualGraphTrainOnFashionMnist) {
  for (const std::string name : {"fashion_mnist_sequential.yaml", "fashion_mnist_resnet.yaml"}) {
    auto r = run_command(cohort("train " + config(name) +
                                " train.steps=120 train.log_every=40 eval.max_batches=2 "
                                "logging.dir=" +
                                (dir_ / name).string()),
                         kRunLimit);
    ASSERT_EQ(r.code, 0) << r.output;
    // Untrained: 10%. 120 steps of batch 64 reach 70-80% on both.
    EXPECT_GT(field(r.output, "test_acc"), 0.6) << name << "\n" << r.output;
    EXPECT_TRUE(fs::exists(dir_ / name / "checkpoints" / "step_120" / "model.safetensors"));
  }
}

// The table names every layer with its output shape and parameters; the total is the closed form
// of the architecture.
TEST_F(ConfigModels, PrintModelListsEveryLayerWithItsShapeAndParameters) {
  auto r =
      run_command(cohort("train " + config("fashion_mnist_sequential.yaml") + " --print-model"));
  ASSERT_EQ(r.code, 0) << r.output;
  const int64_t total = (32 * 9 + 32) + 2 * 32 + (64 * 32 * 9 + 64) + 2 * 64 +
                        (64 * 7 * 7 * 128 + 128) + (128 * 10 + 10);
  EXPECT_NE(r.output.find("total parameters: " + std::to_string(total)), std::string::npos)
      << r.output;
  for (const char* row : {"0      conv2d", "1      batch_norm2d", "[1, 32, 28, 28]",
                          "[1, 64, 7, 7]", "[1, 3136]", "11     linear"})
    EXPECT_NE(r.output.find(row), std::string::npos) << row << "\n" << r.output;
  auto g = run_command(cohort("train " + config("fashion_mnist_resnet.yaml") + " --print-model"));
  ASSERT_EQ(g.code, 0) << g.output;
  for (const char* row : {"block1.3", "res1", "add", "shortcut2", "[1, 32, 7, 7]"})
    EXPECT_NE(g.output.find(row), std::string::npos) << row << "\n" << g.output;
}

// Each mistake is one sentence naming the file and line, the layer's index (or node) and the key,
// with exit code 2.
TEST_F(ConfigModels, BadLayerListsAreOneSentenceNamingTheLayerAndKey) {
  struct Case {
    std::string yaml, expect;
  };
  const std::vector<Case> cases = {
      {"model:\n  type: sequential\n  layers:\n    - flatten\n    - linear: {out: 10, "
       "kernal: 3}\n",
       ":5: model.layers[1] (linear): unknown argument 'kernal' (arguments: out_features, bias)"},
      {"model:\n  type: sequential\n  layers:\n    - conv2d: {out: 8, kernal: 3}\n",
       ":4: model.layers[0] (conv2d): unknown argument 'kernal'; did you mean 'kernel'?"},
      {"model:\n  type: sequential\n  layers:\n    - relu\n    - conv2: {out: 8}\n",
       ":5: model.layers[1]: unknown layer 'conv2'; did you mean 'conv2d'?"},
      {"model:\n  type: sequential\n  layers:\n    - linear: {bias: false}\n",
       "model.layers[0] (linear): missing argument 'out_features' (or 'out')"},
      {"model:\n  type: sequential\n  layers:\n    - conv2d: {out: 8, kernel: 3, stride: two}\n",
       "model.layers[0] (conv2d): stride must be an integer, got 'two'"},
      {"model:\n  type: sequential\n  layers:\n    - flatten\n    - conv2d: {out: 8, kernel: 3}\n",
       "model.layers[1] (conv2d): needs [N, C, H, W] input, got [1, 784]; reshape flat features "
       "first"},
      {"model:\n  type: sequential\n  layers: 3\n",
       "model.layers: must be a non-empty list of layers"},
      {"model:\n  type: graph\n  nodes:\n    - {name: a, conv2d: {out: 8, kernel: 3}}\n    - "
       "{name: b, add: [a, c]}\n",
       "model.nodes[1] 'b' (add): reads 'c', which is not an earlier node"},
      {"model:\n  type: graph\n  nodes:\n    - {name: a, conv2d: {out: 8, kernel: 3, padding: "
       "1}}\n    - {name: b, conv2d: {out: 4, kernel: 1}}\n    - {name: s, add: [a, b]}\n",
       "model.nodes[2] 's' (add): cannot add a [1, 8, 28, 28], b [1, 4, 28, 28]"},
      {"model:\n  type: graph\n  nodes:\n    - {name: a, relu, tanh}\n",
       "model.nodes[0] 'a': has two layers ('relu' and 'tanh')"},
      {"model:\n  type: sequential\n  hidden: [10]\n  layers: [flatten, {linear: {out: 10}}]\n",
       "model.hidden is for model.type mlp, not sequential"},
      {"model:\n  type: sequential\n  layers: [flatten, {linear: {out: 1099511627776}}]\n",
       "model.layers[1] (linear): would hold 8.63e+14 parameters, more than 2^34"},
  };
  for (const Case& c : cases) {
    const fs::path file = write("bad.yaml", c.yaml);
    auto r = run_command(cohort("train " + file.string() + " --print-model"));
    EXPECT_EQ(r.code, 2) << c.yaml << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos)
        << "expected: " << c.expect << "\ngot: " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
}

// SyncBatchNorm: 2 ranks of batch 8 normalise with the statistics of all 16 samples, so they end
// where one process of batch 16 ends (in float64, 1e-9: any missed term is 1e-3 or more). Plain
// batch_norm under DDP normalises per rank and does not, which is what makes this test able to
// fail.
TEST_F(ConfigModels, SyncBatchNormRanksEqualOneProcessWithTheWholeBatch) {
  auto yaml = [&](bool sync) {
    const std::string s = sync ? "true" : "false";
    return "experiment: bn\nmodel:\n  type: sequential\n  layers:\n"
           "    - conv2d: {out: 8, kernel: 3, padding: 1}\n"
           "    - batch_norm2d: {sync: " +
           s +
           "}\n    - relu\n    - max_pool2d: {kernel: 4}\n"
           "    - flatten\n    - linear: {out: 32}\n    - batch_norm1d: {sync: " +
           s +
           "}\n"
           "    - relu\n    - linear: {out: 10}\n"
           "optimizer: {type: sgd, lr: 0.05, momentum: 0.9}\n";
  };
  const fs::path synced = write("sync.yaml", yaml(true)), local = write("local.yaml", yaml(false));
  auto train = [&](const fs::path& cfg, int64_t batch, const std::string& run) {
    return cohort("train " + cfg.string() + " precision=fp64 train.steps=12 train.log_every=4 " +
                  "eval.max_batches=1 eval.batch_size=200 distributed.timeout_s=60 " +
                  "data.batch_size=" + std::to_string(batch) +
                  " logging.dir=" + (dir_ / run).string());
  };
  auto one = run_command(train(synced, 16, "one"), kRunLimit);
  ASSERT_EQ(one.code, 0) << one.output;
  auto two =
      run_command(cohort("launch --nproc-per-node 2 -- ") + train(synced, 8, "two"), kRunLimit);
  ASSERT_EQ(two.code, 0) << two.output;
  expect_same_model(cohort::test::final_model(dir_ / "two"),
                    cohort::test::final_model(dir_ / "one"),
                    "sync batch_norm, 2 ranks vs 1 process", 1e-9);
  auto unsynced =
      run_command(cohort("launch --nproc-per-node 2 -- ") + train(local, 8, "local"), kRunLimit);
  ASSERT_EQ(unsynced.code, 0) << unsynced.output;
  auto a = cohort::test::final_model(dir_ / "local"), b = cohort::test::final_model(dir_ / "one");
  const auto x = a.at("0.weight").contiguous(), y = b.at("0.weight").contiguous();
  double diff = 0;
  for (int64_t i = 0; i < y.numel(); ++i)
    diff = std::max(diff, std::abs(x.data_ptr<double>()[i] - y.data_ptr<double>()[i]));
  EXPECT_GT(diff, 1e-6) << "per-rank batch_norm should not match the whole batch's";
}

// Weights trained in PyTorch (the same nn.Sequential) load through model.init_from, and Cohort's
// evaluation of them reports PyTorch's own test accuracy and loss. Both sides evaluate in float64
// (precision=fp64 here), so the reordered sums of two implementations differ by ~1e-16 and no
// near-tie's argmax depends on the CPU.
TEST_F(ConfigModels, PyTorchWeightsLoadAndCohortReportsPyTorchsAccuracy) {
  const fs::path weights = dir_ / "torch.safetensors";
  auto t = run_command(torch_interop("train " + weights.string() + " 100"), kRunLimit);
  ASSERT_EQ(t.code, 0) << "PyTorch (Debian's python3-torch, scripts/install-deps.sh):\n"
                       << t.output;
  const auto torch = nlohmann::json::parse(t.output.substr(t.output.rfind('{')));
  auto c = run_command(cohort("train " + config("fashion_mnist_sequential.yaml") +
                              " --eval-only precision=fp64 model.init_from=" + weights.string()),
                       kRunLimit);
  ASSERT_EQ(c.code, 0) << c.output;
  EXPECT_EQ(field(c.output, "test_acc"), torch["test_acc"].get<double>()) << c.output;
  EXPECT_NEAR(field(c.output, "test_loss"), torch["test_loss"].get<double>(), 1e-6) << c.output;
}

// Cohort's checkpoint loads (strictly: every parameter and running statistic) into PyTorch's
// nn.Sequential, which then scores what Cohort scores for it (both in float64).
TEST_F(ConfigModels, CohortCheckpointsLoadIntoPyTorch) {
  auto c = run_command(
      cohort("train " + config("fashion_mnist_sequential.yaml") +
             " train.steps=60 train.log_every=30 logging.dir=" + (dir_ / "run").string()),
      kRunLimit);
  ASSERT_EQ(c.code, 0) << c.output;
  const std::string model = (dir_ / "run/checkpoints/step_60/model.safetensors").string();
  auto e = run_command(cohort("train " + config("fashion_mnist_sequential.yaml") +
                              " --eval-only precision=fp64 model.init_from=" + model),
                       kRunLimit);
  ASSERT_EQ(e.code, 0) << e.output;
  auto t = run_command(torch_interop("eval " + model), kRunLimit);
  ASSERT_EQ(t.code, 0) << t.output;
  const auto torch = nlohmann::json::parse(t.output.substr(t.output.rfind('{')));
  EXPECT_EQ(torch["test_acc"].get<double>(), field(e.output, "test_acc")) << t.output;
  EXPECT_NEAR(torch["test_loss"].get<double>(), field(e.output, "test_loss"), 1e-6) << t.output;
}

// The attention layers match PyTorch's nn.MultiheadAttention and nn.TransformerEncoderLayer (pre-
// and post-norm, relu and gelu, causal and not) given PyTorch's own state dict: same names, same
// outputs to float64 rounding.
class TorchLayers : public cohort::test::TempDirTest {};

TEST_F(TorchLayers, AttentionAndTransformerBlocksMatchPyTorch) {
  auto r = run_command(std::string("/usr/bin/python3 ") + COHORT_SOURCE_DIR +
                       "/tests/torch_layers.py " + dir_.string());
  ASSERT_EQ(r.code, 0) << "PyTorch (Debian's python3-torch, scripts/install-deps.sh):\n"
                       << r.output;
  const YAML::Node layers = YAML::Load(
      "[{attention: {num_heads: 2, causal: true}},"
      " {transformer_block: {nhead: 2, dim_feedforward: 16, activation: gelu, norm_first: true,"
      "                      causal: true}},"
      " {transformer_block: {nhead: 4, dim_feedforward: 12}},"
      " layer_norm, {linear: {out: 3}}]");
  const auto spec = cohort::trainer::parse_sequential(layers, "test");
  auto io = cohort::core::io::load_safetensors((dir_ / "io.safetensors").string());
  const cohort::core::Tensor x = io.at("x"), y = io.at("y");
  cohort::core::Generator gen(0);
  auto model = cohort::trainer::build_config_model(
                   spec, x.narrow(0, 0, 1).to(cohort::core::DType::kFloat32), &gen)
                   .module;
  model->to(cohort::core::DType::kFloat64);
  model->load_state_dict(cohort::core::io::load_safetensors((dir_ / "model.safetensors").string()));
  model->eval();
  cohort::core::autograd::NoGradGuard guard;
  const cohort::core::Tensor out = model->forward(x);
  ASSERT_EQ(out.sizes(), y.sizes());
  EXPECT_TRUE(cohort::core::allclose(out, y, 1e-10, 1e-10));
}

}  // namespace
