// Files as an attacker (or a bad disk) writes them: `cohort train` must end with exit code 3 and
// one sentence naming the file, never a crash, a silent success or a different model. Data sets
// whose headers lie, labels out of range, checkpoints whose manifests were edited field by field,
// safetensors headers of the wrong types.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/io/safetensors.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using cohort::test::run_command;

constexpr int kIoError = 3;

void write_idx(const fs::path& path, const std::vector<uint32_t>& dims, uint64_t data_bytes,
               uint8_t fill = 0) {
  std::ofstream f(path, std::ios::binary);
  const char magic[4] = {0, 0, 8, static_cast<char>(dims.size())};
  f.write(magic, 4);
  for (uint32_t d : dims) {
    const char be[4] = {static_cast<char>(d >> 24), static_cast<char>(d >> 16),
                        static_cast<char>(d >> 8), static_cast<char>(d)};
    f.write(be, 4);
  }
  const std::string chunk(1 << 20, static_cast<char>(fill));
  for (uint64_t left = data_bytes; left > 0;) {
    const uint64_t n = std::min<uint64_t>(left, chunk.size());
    f.write(chunk.data(), static_cast<std::streamsize>(n));
    left -= n;
  }
}

class HostileFiles : public cohort::test::TempDirTest {
 protected:
  // A short MLP run on `data` (default: Debian's Fashion-MNIST), extra overrides appended.
  std::string train(const std::string& extra, const std::string& data = "") const {
    return std::string(COHORT_BINARY) + " train " + COHORT_SOURCE_DIR +
           "/configs/fashion_mnist_mlp.yaml model.hidden=[16] data.batch_size=32 threads=1 "
           "train.log_every=5 eval.max_batches=1 logging.dir=" +
           (dir_ / "run").string() + (data.empty() ? "" : " data.path=" + data) + " " + extra;
  }
  static bool have_fashion_mnist() {
    return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  }
};

// 60000 x 350476688 x 3289581145 wraps around 2^64 to 47,040,000: exactly the bytes of 60000
// images of 28 x 28, which the file then holds. The reader must see the lie, not index with it.
TEST_F(HostileFiles, AnIdxHeaderWhoseProductWrapsToTheFileSizeIsExit3) {
  const fs::path data = dir_ / "data";
  fs::create_directories(data);
  write_idx(data / "train-images-idx3-ubyte", {60000, 350476688u, 3289581145u}, 47'040'000);
  write_idx(data / "train-labels-idx1-ubyte", {60000}, 60000);
  auto r = run_command(train("train.steps=2", data.string()));
  EXPECT_EQ(r.code, kIoError) << r.output;
  EXPECT_NE(r.output.find("train-images-idx3-ubyte has impossible dimensions"), std::string::npos)
      << r.output;
}

TEST_F(HostileFiles, ShortLongAndOutOfRangeIdxFilesAreExit3NamingTheFile) {
  const fs::path data = dir_ / "data";
  fs::create_directories(data);
  // Labels out of range: the model has ten classes.
  write_idx(data / "train-images-idx3-ubyte", {64, 28, 28}, 64 * 784);
  write_idx(data / "train-labels-idx1-ubyte", {64}, 64, 57);
  auto r = run_command(train("train.steps=2", data.string()));
  EXPECT_EQ(r.code, kIoError) << r.output;
  EXPECT_NE(r.output.find("train-labels-idx1-ubyte holds label 57 for sample 0"), std::string::npos)
      << r.output;
  // Less data than the header promises, then more.
  write_idx(data / "train-labels-idx1-ubyte", {64}, 64);
  write_idx(data / "train-images-idx3-ubyte", {64, 28, 28}, 64 * 784 - 1);
  r = run_command(train("train.steps=2", data.string()));
  EXPECT_EQ(r.code, kIoError) << r.output;
  EXPECT_NE(r.output.find("holds less data than its header says"), std::string::npos) << r.output;
  write_idx(data / "train-images-idx3-ubyte", {64, 28, 28}, 64 * 784 + 1);
  r = run_command(train("train.steps=2", data.string()));
  EXPECT_EQ(r.code, kIoError) << r.output;
  EXPECT_NE(r.output.find("holds more data than its header says"), std::string::npos) << r.output;
}

// Each field of a checkpoint's manifest, edited: named, the run is exit 3; under
// checkpoint.resume=auto the edited checkpoint is skipped with a warning saying why, and the run
// resumes from the one before. Edits that recompute the manifest's own checksum (an attacker who
// read the format) are still caught by the checks of each field against the others and the data.
TEST_F(HostileFiles, EveryEditedManifestFieldIsACorruptCheckpoint) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing";
  auto r = run_command(train("train.steps=10 checkpoint.every_steps=5 checkpoint.keep=2"));
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path good = dir_ / "run" / "checkpoints";
  ASSERT_TRUE(fs::exists(good / "step_10" / "manifest.json"));
  const nlohmann::json original =
      nlohmann::json::parse(read_text(good / "step_10" / "manifest.json"));

  struct Edit {
    std::string name;
    std::function<void(nlohmann::json&)> apply;
    bool resign;  // recompute manifest_sha256 as the writer would
    std::string expect;
  };
  const std::vector<Edit> edits = {
      {"step -2", [](auto& m) { m["step"] = -2; }, false, "own checksum"},
      {"step 900", [](auto& m) { m["step"] = 900; }, false, "own checksum"},
      {"epoch", [](auto& m) { m["epoch"] = 3; }, false, "own checksum"},
      {"samples", [](auto& m) { m["samples_in_epoch"] = 64; }, false, "own checksum"},
      {"step -2, re-signed", [](auto& m) { m["step"] = -2; }, true, "below its minimum"},
      {"step 900, re-signed", [](auto& m) { m["step"] = 900; }, true, "but it is step_10"},
      {"step as text", [](auto& m) { m["step"] = "10"; }, true, "not an integer"},
      {"samples past the epoch, re-signed",
       [](auto& m) { m["samples_in_epoch"] = int64_t{1} << 40; }, true, "samples of an epoch"},
      {"checksums", [](auto& m) { m["sha256"] = "x"; }, true, "lists no checksums"},
      {"rng",
       [](auto& m) {
         m["rng"]["state"] = {1, 2};
       },
       true, "malformed RNG state"},
  };
  int n = 0;
  for (const Edit& e : edits) {
    SCOPED_TRACE(e.name);
    const fs::path root = dir_ / ("edited" + std::to_string(n++));
    fs::copy(good, root, fs::copy_options::recursive);
    nlohmann::json m = original;
    e.apply(m);
    if (e.resign) {
      nlohmann::json unsigned_m = m;
      unsigned_m.erase("manifest_sha256");
      m["manifest_sha256"] = cohort::core::io::sha256_hex(unsigned_m.dump());
    }
    std::ofstream(root / "step_10" / "manifest.json") << m.dump(2);
    const std::string ckpt = " checkpoint.dir=" + root.string();
    r = run_command(
        train("train.steps=12 checkpoint.resume=" + (root / "step_10").string() + ckpt));
    EXPECT_EQ(r.code, kIoError) << r.output;
    EXPECT_NE(r.output.find("is corrupt"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(e.expect), std::string::npos) << r.output;
    r = run_command(train("train.steps=12 checkpoint.resume=auto" + ckpt));
    if (e.expect == "samples of an epoch") {
      // Consistent on its own; only the data set shows it wrong, after auto chose it.
      EXPECT_EQ(r.code, kIoError) << r.output;
      continue;
    }
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("checkpoint.resume=auto skipped a checkpoint: checkpoint " +
                            (root / "step_10").string()),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("resumed from " + (root / "step_5").string()), std::string::npos)
        << r.output;
  }
}

// model.init_from with a safetensors header whose fields have the wrong JSON types.
TEST_F(HostileFiles, AMalformedSafetensorsHeaderNamesTheFileAndTensor) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing";
  const fs::path p = dir_ / "init.safetensors";
  for (const std::string header :
       {R"({"l1.weight":{"dtype":7,"shape":[16,784],"data_offsets":[0,0]}})",
        R"({"l1.weight":{"dtype":"F32","shape":[-1,784],"data_offsets":[0,0]}})",
        R"({"l1.weight":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
        R"({"l1.weight":{"dtype":"F32","shape":[1],"data_offsets":["0",4]}})",
        R"({"__metadata__":{"a":1}})", R"(["not","an","object"])"}) {
    SCOPED_TRACE(header);
    std::ofstream f(p, std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << std::string(8, '\0');
    f.close();
    auto r = run_command(train("train.steps=1 model.init_from=" + p.string()));
    EXPECT_EQ(r.code, kIoError) << r.output;
    EXPECT_NE(r.output.find(p.string()), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("json.exception"), std::string::npos) << r.output;
  }
}

}  // namespace
