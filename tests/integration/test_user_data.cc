// Data from a user's files under `cohort train`: .npy arrays (Fashion-MNIST converted), a CSV
// table and a folder of PNG and JPEG images, each written here, train to a clear accuracy;
// normalisation is recorded in the run directory; a malformed file stops the run with one
// sentence naming the file and the row or index (exit 3).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "core/data/dataset.h"
#include "data_files.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using cohort::test::run_command;

constexpr int kRunLimit = 300;

class UserData : public cohort::test::TempDirTest {
 protected:
  std::string train(const std::string& yaml, const std::string& extra = "") {
    std::ofstream(dir_ / "c.yaml") << yaml;
    return std::string(COHORT_BINARY) + " train " + (dir_ / "c.yaml").string() +
           " logging.dir=" + (dir_ / ("run" + std::to_string(runs_++))).string() + " " + extra;
  }
  static double test_acc(const std::string& output) {
    std::smatch m;
    if (!std::regex_search(output, m, std::regex(R"(summary: .* test_acc ([0-9.]+))"))) return -1;
    return std::stod(m[1]);
  }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }
  int runs_ = 0;
};

// Fashion-MNIST as .npy (uint8 images [N, 1, 28, 28], int64 labels; the test set as int16 in a
// validation directory): the built-in CNN trains on it as on the IDX files.
TEST_F(UserData, NpyArraysTrainAndRecordTheirNormalisation) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Debian's dataset-fashion-mnist is missing (scripts/install-deps.sh)";
  for (const auto& [split, out, n] : {std::tuple{"train", std::string("."), 6000},
                                      std::tuple{"t10k", std::string("val"), 2000}}) {
    std::vector<int64_t> d;
    auto images = cohort::core::data::read_idx(dir + "/" + split + "-images-idx3-ubyte.gz", d);
    auto labels = cohort::core::data::read_idx(dir + "/" + split + "-labels-idx1-ubyte.gz", d);
    fs::create_directories(dir_ / out);
    cohort::test::write_npy(p(out + "/x.npy"), "|u1", {n, 1, 28, 28}, images.data(), n * 784);
    std::vector<int64_t> y64(labels.begin(), labels.begin() + n);
    std::vector<int16_t> y16(labels.begin(), labels.begin() + n);
    if (out == ".")
      cohort::test::write_npy(p("y.npy"), "<i8", {n}, y64.data(), n * 8);
    else
      cohort::test::write_npy(p("val/y.npy"), "<i2", {n}, y16.data(), n * 2);
  }
  auto r = run_command(train("model: {type: cnn}\ndata: {dataset: npy, inputs: " + p("x.npy") +
                             ", targets: " + p("y.npy") + ", val_path: " + p("val") +
                             "}\noptimizer: {lr: 0.02, momentum: 0.9}\n"
                             "train: {steps: 150, log_every: 50}\n"),
                       kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_GT(test_acc(r.output), 0.65) << r.output;
  EXPECT_NE(r.output.find("npy, 6000 training / 2000 evaluation samples, 10 classes"),
            std::string::npos)
      << r.output;
  const auto data = nlohmann::json::parse(read_text(dir_ / "run0" / "data.json"));
  // Fashion-MNIST's pixel mean and std (0.2860 and 0.3530 of 255) from these samples.
  EXPECT_NEAR(data["normalization"]["mean"][0].get<double>() / 255, 0.286, 0.01) << data.dump();
  EXPECT_NEAR(data["normalization"]["std"][0].get<double>() / 255, 0.353, 0.01) << data.dump();
  EXPECT_EQ(data["normalization"]["source"], "computed from 6000 training samples");
}

// A CSV table of three separable classes (a header, the label in the middle column), held out
// by data.val_fraction: a sequential MLP learns it.
TEST_F(UserData, CsvTablesTrainWithANamedTargetColumn) {
  std::mt19937 rng(3);
  std::normal_distribution<double> noise(0, 0.3);
  std::ofstream f(dir_ / "t.csv");
  f << "x1,species,x2,x3\n";
  for (int i = 0; i < 900; ++i) {
    const int c = i % 3;
    f << 10 + c * 2 + noise(rng) << "," << c << "," << -c * 3 + noise(rng) << ","
      << 1000 + noise(rng) * 50 << "\n";
  }
  f.close();
  auto r = run_command(train("model:\n  type: sequential\n  layers: [{linear: {out: 16}}, relu, "
                             "{linear: {out: 3}}]\ndata: {dataset: csv, path: " +
                             p("t.csv") +
                             ", target_column: species, val_fraction: 0.2, batch_size: 32}\n"
                             "optimizer: {lr: 0.1}\ntrain: {epochs: 3, log_every: 20}\n"),
                       kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_GT(test_acc(r.output), 0.95) << r.output;
  EXPECT_NE(r.output.find("csv, 720 training / 180 evaluation samples, 3 classes"),
            std::string::npos)
      << r.output;
}

// An image folder: class "horizontal" and class "vertical" stripes at random phases, half PNG
// and half JPEG, 20x20 resized to 12x12; a small CNN tells them apart.
TEST_F(UserData, ImageFoldersOfPngAndJpegTrain) {
  std::mt19937 rng(5);
  for (const std::string cls : {"horizontal", "vertical"}) {
    fs::create_directories(dir_ / "img" / cls);
    for (int i = 0; i < 60; ++i) {
      const int phase = static_cast<int>(rng() % 4);
      std::vector<uint8_t> px(20 * 20 * 3);
      for (int y = 0; y < 20; ++y)
        for (int x = 0; x < 20; ++x)
          for (int c = 0; c < 3; ++c)
            px[(y * 20 + x) * 3 + c] = (((cls == "horizontal" ? y : x) + phase) / 2) % 2 ? 220 : 30;
      const std::string name = p("img/" + cls + "/" + std::to_string(i));
      if (i % 2)
        cohort::test::write_jpeg(name + ".jpg", 20, 20, 3, px);
      else
        ASSERT_TRUE(cohort::test::write_png(name + ".png", 20, 20, 3, px));
    }
  }
  auto r = run_command(
      train("model:\n  type: sequential\n  layers:\n    - conv2d: {out: 8, kernel: 3, padding: 1}\n"
            "    - relu\n    - max_pool2d: {kernel: 2}\n    - flatten\n    - linear: {out: 2}\n"
            "data: {dataset: image_folder, path: " +
            p("img") +
            ", image_size: [12, 12], "
            "val_fraction: 0.25, batch_size: 16}\noptimizer: {type: adamw, lr: 0.01}\n"
            "train: {epochs: 4, log_every: 10}\n"),
      kRunLimit);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_GT(test_acc(r.output), 0.9) << r.output;
  EXPECT_NE(r.output.find("image_folder, 90 training / 30 evaluation samples, 2 classes"),
            std::string::npos)
      << r.output;
}

// Malformed files: one sentence naming the file and the index, row or image, exit code 3 (also
// when the image is found broken mid-epoch, on the loader's thread).
TEST_F(UserData, MalformedFilesStopTheRunNamingTheFileAndPlace) {
  std::vector<float> x(4 * 3, 1.0f);
  cohort::test::write_npy(p("x.npy"), "<f4", {4, 3}, x.data(), x.size() * 4);
  std::vector<int64_t> y{0, 1, -3, 1};
  cohort::test::write_npy(p("y.npy"), "<i8", {4}, y.data(), 32);
  const std::string mlp = "model: {type: sequential, layers: [{linear: {out: 4}}]}\n";
  auto r = run_command(train(mlp + "data: {dataset: npy, inputs: " + p("x.npy") +
                             ", targets: " + p("y.npy") + ", batch_size: 2}\n"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find(p("y.npy") + ": label at index 2 is -3"), std::string::npos) << r.output;

  std::ofstream(dir_ / "t.csv") << "a,b,y\n1,2,0\n3,4,1\n5,six,0\n";
  r = run_command(train(mlp + "data: {dataset: csv, path: " + p("t.csv") + "}\n"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find(p("t.csv") + ":4: column 'b' holds 'six', not a number"),
            std::string::npos)
      << r.output;

  fs::create_directories(dir_ / "img" / "a");
  std::vector<uint8_t> px(8 * 8 * 3, 100);
  for (int i = 0; i < 8; ++i)
    ASSERT_TRUE(cohort::test::write_png(p("img/a/" + std::to_string(i) + ".png"), 8, 8, 3, px));
  std::ofstream(dir_ / "img" / "a" / "9_broken.png") << "\x89PNG\r\n\x1a\n garbage";
  r =
      run_command(train("model: {type: sequential, layers: [flatten, {linear: {out: 2}}]}\n"
                        "data: {dataset: image_folder, path: " +
                        p("img") +
                        ", image_size: 8, val_fraction: 0, batch_size: 3, normalize: none}\n"
                        "train: {epochs: 2}\n"));
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("image " + p("img/a/9_broken.png") + " is not a readable PNG"),
            std::string::npos)
      << r.output;
}

// Labels the model has no output for are a config error before training, naming both numbers.
TEST_F(UserData, LabelsBeyondTheModelsOutputsAreAConfigError) {
  std::vector<float> x(4 * 3, 1.0f);
  std::vector<int64_t> y{0, 1, 5, 1};
  cohort::test::write_npy(p("x.npy"), "<f4", {4, 3}, x.data(), x.size() * 4);
  cohort::test::write_npy(p("y.npy"), "<i8", {4}, y.data(), 32);
  auto r =
      run_command(train("model: {type: sequential, layers: [{linear: {out: 4}}]}\n"
                        "data: {dataset: npy, inputs: " +
                        p("x.npy") + ", targets: " + p("y.npy") + ", batch_size: 2}\n"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("the data has 6 classes (labels 0 to 5) but the model outputs 4 logits"),
            std::string::npos)
      << r.output;
}

}  // namespace
