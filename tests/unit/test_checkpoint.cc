// safetensors round trips, an independent reader, and atomic checkpoints with checksums.
#include <gtest/gtest.h>

#include "test_util.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"
#include "core/ops/ops.h"

namespace cohort::core::io {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public cohort::test::TempDirTest {
 protected:
};

TensorMap sample() {
  Generator g(7);
  return {{"w", randn({3, 4}, {}, &g)},
          {"b", arange(5, TensorOptions(DType::kFloat64))},
          {"idx", arange(6).view({2, 3})},
          {"i32", arange(3, TensorOptions(DType::kInt32))},
          {"flag", from_vector<bool>({true, false}, {2})},
          {"bytes", arange(4, TensorOptions(DType::kUInt8))},
          {"half", tensor({0.5, -2}).to(DType::kFloat16)},
          {"bf", tensor({1.5, 3}).to(DType::kBFloat16)},
          {"scalar", scalar_tensor(2.5)},
          {"empty", zeros({0, 3})},
          {"strided", arange(12, TensorOptions(DType::kFloat32)).view({3, 4}).t()}};
}

TEST_F(CheckpointTest, SafetensorsRoundTripsEveryDtype) {
  TensorMap in = sample();
  std::string p = (dir_ / "t.safetensors").string();
  save_safetensors(p, in, {{"note", "hello"}});
  std::map<std::string, std::string> meta;
  TensorMap out = load_safetensors(p, &meta);
  EXPECT_EQ(meta["note"], "hello");
  ASSERT_EQ(out.size(), in.size());
  for (auto& [k, v] : in) {
    SCOPED_TRACE(k);
    EXPECT_EQ(out[k].dtype(), v.dtype());
    EXPECT_TRUE(allclose(out[k].to(DType::kFloat64), v.to(DType::kFloat64), 0, 0));
  }
  // The header length is 8-byte aligned so that readers may map the data.
  std::ifstream f(p, std::ios::binary);
  uint64_t n;
  f.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST_F(CheckpointTest, IndependentNumpyReaderSeesTheSameValues) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3-numpy is not installed (scripts/install-deps.sh installs it)";
  TensorMap in = sample();
  std::string p = (dir_ / "t.safetensors").string();
  save_safetensors(p, in);
  std::string cmd =
      "/usr/bin/python3 " + std::string(COHORT_SOURCE_DIR) + "/tests/read_safetensors.py " + p;
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string text;
  std::array<char, 4096> buf;
  size_t got;
  while ((got = fread(buf.data(), 1, buf.size(), pipe)) > 0) text.append(buf.data(), got);
  ASSERT_EQ(pclose(pipe), 0) << text;
  auto j = nlohmann::json::parse(text);
  for (auto& [k, v] : in) {
    SCOPED_TRACE(k);
    ASSERT_TRUE(j.contains(k));
    EXPECT_EQ(j[k]["shape"].get<Shape>(), v.sizes());
    Tensor theirs = from_vector(j[k]["values"].get<std::vector<double>>(), v.sizes());
    EXPECT_TRUE(allclose(theirs, v.to(DType::kFloat64), 0, 0));
  }
}

TEST_F(CheckpointTest, MalformedFilesAreClearErrors) {
  std::string p = (dir_ / "bad.safetensors").string();
  std::ofstream(p) << "xx";
  EXPECT_THROW(load_safetensors(p), IoError);
  uint64_t n = 1000;
  std::ofstream f2(p, std::ios::binary);
  f2.write(reinterpret_cast<const char*>(&n), 8);
  f2 << "{}";
  f2.close();
  EXPECT_THROW(load_safetensors(p), IoError);
  EXPECT_THROW(load_safetensors((dir_ / "missing").string()), IoError);
}

TEST_F(CheckpointTest, AtomicCheckpointsKeepNewestAndVerifyChecksums) {
  std::string root = (dir_ / "ck").string();
  TensorMap model = {{"w", ones({2, 2})}};
  TensorMap opt = {{"0.momentum_buffer", zeros({2, 2})}};
  for (int64_t s : {10, 20, 30, 40})
    save_checkpoint(root, model, opt, {s, 0, s, -1, Generator(s).state(), "", ""}, 2);
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step_30", "step_40"}));
  Checkpoint c = load_checkpoint(root + "/step_40");
  EXPECT_EQ(c.meta.step, 40);
  EXPECT_EQ(c.meta.batch_in_epoch, 40);
  EXPECT_EQ(c.meta.rng.s, Generator(40).state().s);
  EXPECT_TRUE(allclose(c.model["w"], ones({2, 2})));

  // A crash mid-write leaves only a temporary directory; a corrupt newest checkpoint is skipped.
  fs::create_directories(root + "/.step_50.tmp-1");
  {
    std::fstream f(root + "/step_40/model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  EXPECT_THROW(load_checkpoint(root + "/step_40"), IoError);
  EXPECT_EQ(latest_checkpoint(root), root + "/step_30");
  EXPECT_FALSE(latest_checkpoint((dir_ / "none").string()).has_value());
}

// Pruning keeps the newest `keep` of the writer's own run: another run's checkpoints in the same
// directory (higher steps included) are neither pruned nor able to crowd this run's out. The run
// id and config travel in the manifest.
TEST_F(CheckpointTest, PruningKeepsTheNewestOfItsOwnRunAndNeverTouchesAnothers) {
  std::string root = (dir_ / "ck").string();
  TensorMap model = {{"w", ones({2, 2})}};
  TensorMap opt = {{"0.momentum_buffer", zeros({2, 2})}};
  for (int64_t s : {50, 75, 100})
    save_checkpoint(root, model, opt, {s, 0, s, -1, Generator(s).state(), "old", "a: 1\n"}, 3);
  for (int64_t s : {10, 20, 30, 40})
    save_checkpoint(root, model, opt, {s, 0, s, -1, Generator(s).state(), "new", "a: 2\n"}, 3);
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step_100", "step_20", "step_30", "step_40", "step_50",
                                             "step_75"}));
  const Checkpoint c = load_checkpoint(root + "/step_40");
  EXPECT_EQ(c.meta.run_id, "new");
  EXPECT_EQ(c.meta.config, "a: 2\n");
  EXPECT_EQ(checkpoint_run_id(root + "/step_75"), "old");
}

}  // namespace
}  // namespace cohort::core::io
