// Config validation: every mistake is one ConfigError sentence naming the key and file:line.
#include <gtest/gtest.h>

#include "test_util.h"

#include <filesystem>
#include <fstream>

#include "core/tensor/cuda/cuda_device.h"
#include "core/util/error.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace cohort::trainer {
namespace {

class ConfigTest : public cohort::test::TempDirTest {
 protected:
  std::string write(const std::string& text) {
    std::string p = (dir_ / "c.yaml").string();
    std::ofstream(p) << text;
    return p;
  }
  // The message of the ConfigError that loading raises, or "" when it loads.
  std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
    std::string p = write(text);
    try {
      load_config(p, overrides);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  }
};

const char* kValid =
    "experiment: t\n"
    "model:\n"
    "  type: mlp\n"
    "  hidden: [32]\n"
    "optimizer:\n"
    "  lr: 0.1\n";

TEST_F(ConfigTest, ValidConfigGetsDefaults) {
  Config c = load_config(write(kValid), {});
  EXPECT_EQ(c.model.type, "mlp");
  EXPECT_EQ(c.model.hidden, std::vector<int64_t>{32});
  EXPECT_EQ(c.data.batch_size, 64);
  EXPECT_EQ(c.optimizer.kind, core::optim::OptimizerKind::kSgd);
  EXPECT_EQ(c.logging.dir, "runs/t");
  EXPECT_EQ(c.checkpoint.dir, "runs/t/checkpoints");
  EXPECT_EQ(c.resolved["data"]["batch_size"].as<int>(), 64);
}

TEST_F(ConfigTest, OverridesApplyAndAreValidated) {
  Config c = load_config(write(kValid), {"optimizer.lr=0.5", "data.batch_size=8", "train.steps=3"});
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 0.5);
  EXPECT_EQ(c.data.batch_size, 8);
  EXPECT_EQ(c.train.steps, 3);
  std::string e = error_of(kValid, {"optimizer.lr=fast"});
  EXPECT_NE(e.find("command line"), std::string::npos) << e;
  EXPECT_NE(e.find("optimizer.lr must be a number"), std::string::npos) << e;
  e = error_of(kValid, {"optimizer.lrr=1"});
  EXPECT_NE(e.find("unknown key 'optimizer.lrr'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'optimizer.lr'"), std::string::npos) << e;
  e = error_of(kValid, {"no_equals_sign"});
  EXPECT_NE(e.find("key.path=value"), std::string::npos) << e;
}

TEST_F(ConfigTest, UnknownKeyNamesKeyAndLine) {
  std::string e = error_of(std::string(kValid) + "trian:\n  epochs: 2\n");
  EXPECT_NE(e.find("c.yaml:7"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key 'trian'"), std::string::npos) << e;
  e = error_of("model:\n  type: mlp\n  hiden: [3]\n");
  EXPECT_NE(e.find("c.yaml:3: unknown key 'model.hiden'; did you mean 'model.hidden'?"),
            std::string::npos)
      << e;
}

TEST_F(ConfigTest, WrongTypesAndRanges) {
  struct Case {
    std::string yaml, expect;
  } cases[] = {
      {"model:\n  type: mlp\ndata:\n  batch_size: many\n",
       "c.yaml:4: data.batch_size must be an integer, got 'many'"},
      {"model:\n  type: mlp\ndata:\n  batch_size: 0\n", "c.yaml:4: data.batch_size must be in [1,"},
      {"model:\n  type: mlp\noptimizer:\n  lr: -1\n", "optimizer.lr must be greater than 0"},
      {"model:\n  type: mlp\noptimizer:\n  momentum: 1.5\n",
       "optimizer.momentum must be in [0, 1], got 1.5"},
      {"model:\n  type: transformer\n",
       "c.yaml:2: model.type must be one of mlp, cnn, gpt, sequential, graph, custom, got "
       "'transformer'"},
      {"model:\n  type: mlp\n  hidden: 5\n", "model.hidden must be a list of integers"},
      {"model:\n  type: mlp\n  hidden: [5, x]\n", "got an element 'x'"},
      {"model:\n  type: mlp\ndata:\n  shuffle: maybe\n", "data.shuffle must be true or false"},
      {"model: mlp\n", "c.yaml:1: 'model' must be a mapping of keys"},
      {"model:\n  type: mlp\ndevice: tpu\n", "device must be auto, cpu, cuda or cuda:N"},
      {"model:\n  type: mlp\ndevice: 'cuda:x'\n", "device must be auto, cpu, cuda or cuda:N"},
      {"model:\n  type: mlp\ndevice: 'cuda:'\n", "device must be auto, cpu, cuda or cuda:N"},
      {"model:\n  type: mlp\noptimizer:\n  nesterov: true\n",
       "optimizer.nesterov needs optimizer.momentum > 0"},
      {"model:\n  type: mlp\nlogging:\n  tensorboard: 3\n",
       "c.yaml:4: logging.tensorboard must be true or false"},
      {"model:\n  type: gpt\n  dim: 10\n  heads: 3\ndata:\n  dataset: text\n  path: "
       "/etc/hostname\n",
       "model.dim (10) must be divisible by model.heads (3)"},
      {"model:\n  type: mlp\ndistributed:\n  compression: int8\n",
       "c.yaml:4: distributed.compression must be one of none, bf16, fp16, powersgd"},
      {"model:\n  type: mlp\ndistributed:\n  strategy: fsdp\n  compression: bf16\n",
       "c.yaml:5: distributed.compression compresses gradient buckets of distributed.strategy "
       "ddp, zero1 and zero2, not fsdp"},
      {"model:\n  type: mlp\ndistributed:\n  strategy: zero2\n  compression: powersgd\n",
       "powersgd all-reduces low-rank factors of whole gradients: it needs distributed.strategy "
       "ddp, not zero2"},
      {"model:\n  type: mlp\nprecision: fp16\ndistributed:\n  compression: powersgd\n",
       "powersgd cannot follow precision fp16's loss scaling"},
      {"model:\n  type: mlp\ndistributed:\n  powersgd:\n    rank: 4\n",
       "c.yaml:5: distributed.powersgd.rank is for distributed.compression powersgd, not none"},
      {"model:\n  type: mlp\ndistributed:\n  compression: powersgd\n  powersgd:\n    rank: 0\n",
       "distributed.powersgd.rank must be in [1, 1024]"},
  };
  for (const auto& c : cases) {
    std::string e = error_of(c.yaml);
    EXPECT_NE(e.find(c.expect), std::string::npos) << "yaml:\n" << c.yaml << "error: " << e;
  }
}

TEST_F(ConfigTest, MissingRequiredKeyMalformedAndEmptyFiles) {
  EXPECT_NE(error_of("experiment: x\n").find("missing required key model.type"), std::string::npos);
  std::string e = error_of("model:\n  type: [mlp\n");
  EXPECT_NE(e.find("malformed YAML"), std::string::npos) << e;
  EXPECT_NE(e.find("c.yaml:"), std::string::npos) << e;
  EXPECT_NE(error_of("").find("is empty"), std::string::npos);
  EXPECT_NE(error_of("# only a comment\n").find("is empty"), std::string::npos);
  EXPECT_NE(error_of("- a\n- b\n").find("must be a mapping"), std::string::npos);
  try {
    load_config((dir_ / "nope.yaml").string(), {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos);
  }
}

// Keys written as YAML mappings or lists ("? {a: 1}: b"), which fuzz_config found escaping as a
// yaml-cpp conversion error, are a config error naming the file and the line.
TEST_F(ConfigTest, KeysThatAreNotPlainNamesAreConfigErrors) {
  std::string e = error_of(std::string(kValid) + "data:\n  ?  batch^size: 128\n");
  EXPECT_NE(e.find("c.yaml:8: a key must be a plain name, not a mapping (under 'data')"),
            std::string::npos)
      << e;
  e = error_of(std::string(kValid) + "? [a, b]\n: 1\n");
  EXPECT_NE(e.find("a key must be a plain name, not a list (at the top level)"), std::string::npos)
      << e;
}

TEST_F(ConfigTest, MissingDataPathNamesKeyAndLine) {
  std::string e = error_of("model:\n  type: mlp\ndata:\n  path: /nonexistent/fmnist\n");
  EXPECT_NE(e.find("c.yaml:4: data.path /nonexistent/fmnist is not a directory"), std::string::npos)
      << e;
  e = error_of("model:\n  type: gpt\ndata:\n  dataset: text\n  path: /nonexistent.txt\n");
  EXPECT_NE(e.find("data.path /nonexistent.txt is not a readable file"), std::string::npos) << e;
  e = error_of("model:\n  type: gpt\ndata:\n  dataset: tokens\n  path: /nonexistent.bin\n");
  EXPECT_NE(e.find("data.path /nonexistent.bin is not a readable file"), std::string::npos) << e;
  e = error_of("model:\n  type: mlp\ndata:\n  dataset: synthetic\n");
  EXPECT_NE(e.find("data.dataset synthetic needs model.type gpt"), std::string::npos) << e;
  e = error_of(
      "model:\n  type: gpt\n  vocab: 100\ndata:\n  dataset: text\n  path: /etc/hostname\n");
  EXPECT_NE(e.find("model.vocab must be at least 256 for data.dataset text"), std::string::npos)
      << e;
  e = error_of("model:\n  type: gpt\ndata:\n  dataset: synthetic\n  val_path: /etc/hostname\n");
  EXPECT_NE(e.find("data.val_path is for data.dataset tokens, npy, csv and image_folder"),
            std::string::npos)
      << e;
}

}  // namespace
}  // namespace cohort::trainer

namespace cohort::trainer {
namespace {

// Where the build or the machine has no GPU, asking for one is a ConfigError that says why;
// cpu and auto train on the CPU.
TEST(ResolveDevice, CpuAutoAndMissingGpus) {
  EXPECT_TRUE(resolve_device(DeviceSpec::parse("cpu"), 3).is_cpu());
  if (const int gpus = core::cuda::device_count(); gpus > 0) {
    EXPECT_TRUE(resolve_device(DeviceSpec::parse("auto"), 0).is_cuda());
    EXPECT_THROW(resolve_device(DeviceSpec::parse("cuda:999"), 0), ConfigError);
    // More ranks on the node than GPUs: auto falls back to the CPU, cuda is an error.
    EXPECT_TRUE(resolve_device(DeviceSpec::parse("auto"), 0, gpus + 1).is_cpu());
    EXPECT_THROW(resolve_device(DeviceSpec::parse("cuda"), 0, gpus + 1), ConfigError);
    return;
  }
  EXPECT_TRUE(resolve_device(DeviceSpec::parse("auto"), 1).is_cpu());
  try {
    resolve_device(DeviceSpec::parse("cuda"), 0);
    ADD_FAILURE() << "a GPU was found where there is none";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("device cuda was requested but"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace cohort::trainer
