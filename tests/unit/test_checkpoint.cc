// safetensors round trips, an independent reader, and atomic checkpoints with checksums.
#include <gtest/gtest.h>

#include "test_util.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <functional>
#include "core/io/checkpoint.h"
#include "core/io/checkpoint_detail.h"
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

// A sharded checkpoint from three "ranks", each holding uneven pieces of a tensor (as FSDP's
// units cut them) plus one whole tensor: read whole, in any range, and refused whenever its
// manifest or files do not tile every tensor exactly.
TEST_F(CheckpointTest, ShardedCheckpointsReadAnyRangeAndRefuseBadTilings) {
  const std::string root = (dir_ / "sharded").string();
  const Tensor w = arange(30, TensorOptions(DType::kFloat64)).view({5, 6});
  const Tensor m = mul(w, 2.0);
  const Tensor flat = w.view({-1}), mflat = m.view({-1});
  const std::vector<std::pair<int64_t, int64_t>> cuts = {{0, 7}, {7, 19}, {19, 30}};
  const std::string tmp = sharded_tmp_dir(root, 3, "run1");
  fs::create_directories(root);
  prepare_sharded_dir(tmp);
  std::vector<std::string> entries;
  for (int r = 0; r < 3; ++r) {
    ShardedState st;
    auto [b, e] = cuts[static_cast<size_t>(r)];
    st.model.push_back({"w", w.sizes(), b, flat.narrow(0, b, e - b)});
    st.optimizer.push_back({"0.exp_avg", m.sizes(), b, mflat.narrow(0, b, e - b)});
    if (r == 0) st.model.push_back({"bias", {4}, 0, ones({4})});
    entries.push_back(write_checkpoint_shard(tmp, r, st));
  }
  CheckpointMeta meta{3, 0, 3, 24, Generator(3).state(), "run1", ""};
  const std::string dir = commit_sharded_checkpoint(root, tmp, entries, meta, 2);
  EXPECT_EQ(dir, root + "/step_3");
  EXPECT_FALSE(fs::exists(tmp));

  CheckpointReader ck(dir);
  using Part = CheckpointReader::Part;
  EXPECT_EQ(ck.world_size(), 3);
  EXPECT_EQ(ck.meta().samples_in_epoch, 24);
  EXPECT_TRUE(allclose(ck.read(Part::kModel, "w"), w));
  EXPECT_TRUE(allclose(ck.read(Part::kOptimizer, "0.exp_avg"), m));
  EXPECT_TRUE(allclose(ck.read(Part::kModel, "bias"), ones({4})));
  // A range across two ranks' pieces, and one inside a piece.
  EXPECT_TRUE(allclose(ck.read_range(Part::kModel, "w", 5, 21), flat.narrow(0, 5, 16)));
  EXPECT_TRUE(allclose(ck.read_range(Part::kModel, "w", 8, 9), flat.narrow(0, 8, 1)));
  EXPECT_THROW(ck.read(Part::kModel, "nope"), IoError);
  EXPECT_EQ(load_checkpoint(dir).model.size(), 2u);
  EXPECT_EQ(latest_checkpoint(root), dir);

  // Edited manifests, re-signed so that only the edit is wrong.
  const std::string text = cohort::test::read_text(fs::path(dir) / "manifest.json");
  auto edited = [&](const std::function<void(nlohmann::json&)>& edit, const std::string& expect) {
    SCOPED_TRACE(expect);
    auto j = nlohmann::json::parse(text);
    edit(j);
    j["manifest_sha256"] = detail::manifest_digest(j);
    std::ofstream(fs::path(dir) / "manifest.json") << j.dump();
    try {
      CheckpointReader bad(dir);
      bad.read_all(Part::kModel);
      ADD_FAILURE() << "accepted";
    } catch (const IoError& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
    }
  };
  edited([](nlohmann::json& j) { j["tensors"]["model"]["w"]["pieces"][1][1] = 8; },
         "pieces that do not tile it");
  edited([](nlohmann::json& j) { j["tensors"]["model"]["w"]["pieces"].erase(2); },
         "pieces that do not cover it");
  edited([](nlohmann::json& j) { j["tensors"]["model"]["w"]["pieces"][0][0] = 7; },
         "pieces that do not tile it");
  edited(
      [](nlohmann::json& j) {
        j["tensors"]["model"]["w"]["shape"] = {6, 6};
      },
      "pieces that do not cover it");
  edited(
      [](nlohmann::json& j) {
        j["tensors"]["model"]["w"]["shape"] = {1 << 30, 1 << 30};
      },
      "more than 2^40 elements");
  // Factors each within bounds whose product wraps int64.
  edited(
      [](nlohmann::json& j) {
        j["tensors"]["model"]["w"]["shape"] = {int64_t{1} << 40, int64_t{1} << 40,
                                               int64_t{1} << 40};
      },
      "more than 2^40 elements");
  edited([](nlohmann::json& j) { j["step"] = int64_t{1} << 62; }, "above its maximum");
  edited([](nlohmann::json& j) { j["tensors"]["model"]["w"]["dtype"] = "F32"; },
         "does not hold model/w@0 as its manifest says");
  edited([](nlohmann::json& j) { j["world_size"] = 2; }, "checksums of other files");
  edited([](nlohmann::json& j) { j["world_size"] = -1; }, "below its minimum 1");
  edited([](nlohmann::json& j) { j["tensors"]["model"]["w"]["pieces"] = "all"; },
         "lists no pieces");
  std::ofstream(fs::path(dir) / "manifest.json") << text;
  EXPECT_NO_THROW(CheckpointReader{dir});
}

}  // namespace
}  // namespace cohort::core::io
