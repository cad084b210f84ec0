// The datasets users bring: .npy arrays (every dtype, the header's checks), CSV tables (headers,
// target columns, quoted fields, every malformed row), image folders (PNG and JPEG, grey and RGB,
// resizing), normalisation and seeded splits. Files are written by tests/data_files.h.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/data/files.h"
#include "core/data/image.h"
#include "core/data/npy.h"
#include "core/util/error.h"
#include "data_files.h"
#include "test_util.h"

namespace cohort::core::data {
namespace {

namespace fs = std::filesystem;
using cohort::test::write_npy;

class DataFiles : public cohort::test::TempDirTest {
 protected:
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  template <typename T>
  std::string npy(const std::string& name, const std::string& descr, std::vector<int64_t> shape,
                  const std::vector<T>& values) {
    write_npy(path(name), descr, shape, values.data(), values.size() * sizeof(T));
    return path(name);
  }
  std::string text(const std::string& name, const std::string& body) {
    std::ofstream(path(name)) << body;
    return path(name);
  }
  // The message of the IoError `f` throws ("" when it throws none).
  template <typename F>
  static std::string io_error(F&& f) {
    try {
      f();
    } catch (const IoError& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(DataFiles, NpyEveryNumericDtypeReadsAsFloatAndLabelsAsClasses) {
  const auto y = npy<int64_t>("y.npy", "<i8", {3}, {0, 2, 1});
  const std::vector<double> expect = {0, 1.5, -2, 3, 4, 250};
  auto check = [&](const std::string& x) {
    NpyDataset d(x, y);
    EXPECT_EQ(d.size(), 3);
    EXPECT_EQ(d.num_classes(), 3);
    Batch b = d.get_batch({2, 0});
    ASSERT_EQ(b.input.sizes(), (Shape{2, 2}));
    EXPECT_EQ(b.input.dtype(), DType::kFloat32);
    EXPECT_FLOAT_EQ(b.input.data_ptr<float>()[0], static_cast<float>(expect[4]));
    EXPECT_FLOAT_EQ(b.input.data_ptr<float>()[3], static_cast<float>(expect[1]));
    EXPECT_EQ(b.target.data_ptr<int64_t>()[0], 1);
    EXPECT_EQ(b.target.data_ptr<int64_t>()[1], 0);
  };
  check(npy<float>("f4.npy", "<f4", {3, 2}, {0, 1.5f, -2, 3, 4, 250}));
  check(npy<double>("f8.npy", "<f8", {3, 2}, {0, 1.5, -2, 3, 4, 250}));
  // float16 bits of 0, 1.5, -2, 3, 4, 250
  check(npy<uint16_t>("f2.npy", "<f2", {3, 2}, {0x0000, 0x3e00, 0xc000, 0x4200, 0x4400, 0x5bd0}));
  // uint8 is pixel-like: floats. Wider integers are indices: int64.
  NpyDataset u8(npy<uint8_t>("u1.npy", "|u1", {3, 2}, {0, 1, 2, 3, 4, 250}), y);
  EXPECT_EQ(u8.get_batch({0}).input.dtype(), DType::kFloat32);
  EXPECT_EQ(u8.channels(), 2);
  NpyDataset i32(npy<int32_t>("i4.npy", "<i4", {3, 2}, {0, 1, -2, 3, 4, 250}), y);
  Batch b = i32.get_batch({1});
  EXPECT_EQ(b.input.dtype(), DType::kInt64);
  EXPECT_EQ(b.input.data_ptr<int64_t>()[0], -2);
  EXPECT_EQ(i32.channels(), 0);
  // Labels stored as integral floats, or as [N, 1], are fine.
  NpyDataset fl(npy<float>("x.npy", "<f4", {3, 1}, {1, 2, 3}),
                npy<float>("yf.npy", "<f4", {3, 1}, {1, 0, 4}));
  EXPECT_EQ(fl.num_classes(), 5);
}

TEST_F(DataFiles, MalformedNpyFilesNameTheFileAndWhat) {
  const auto y = npy<int64_t>("y.npy", "<i8", {2}, {0, 1});
  const auto x = npy<float>("x.npy", "<f4", {2, 2}, {1, 2, 3, 4});
  struct Case {
    std::string name, expect;
    std::function<void()> make;
  };
  std::vector<Case> cases = {
      {"magic", "does not start with NumPy's magic bytes",
       [&] { text("magic.npy", "not an array at all"); }},
      {"big", "is big-endian",
       [&] {
         npy<float>("big.npy", ">f4", {2, 2}, {1, 2, 3, 4});
       }},
      {"fortran", "Fortran order",
       [&] {
         std::vector<float> v{1, 2, 3, 4};
         write_npy(path("fortran.npy"), "<f4", {2, 2}, v.data(), 16, "True");
       }},
      {"complex", "is not a float, integer or bool type",
       [&] {
         npy<float>("complex.npy", "<c8", {2, 1}, {1, 2, 3, 4});
       }},
      {"short", "bytes but its header promises",
       [&] {
         npy<float>("short.npy", "<f4", {2, 3}, {1, 2, 3, 4});
       }},
      {"huge", "passes 1 TiB",
       [&] {
         npy<float>("huge.npy", "<f4", {1000000000000, 1000}, {1});
       }},
      {"structured", "not a simple type string",
       [&] {
         text("structured.npy",
              std::string("\x93NUMPY\x01\x00\x3c\x00", 10) +
                  "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }");
       }},
  };
  for (auto& c : cases) {
    c.make();
    const std::string file = path(c.name + ".npy");
    const std::string e = io_error([&] { NpyDataset(file, y); });
    EXPECT_NE(e.find(file), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.name << ": " << e;
  }
  // Labels: counted, and each one a class number.
  EXPECT_NE(io_error([&] {
              NpyDataset(x, npy<int64_t>("y3.npy", "<i8", {3}, {0, 1, 2}));
            }).find("has 3 labels but"),
            std::string::npos);
  EXPECT_NE(io_error([&] {
              NpyDataset(x, npy<int64_t>("neg.npy", "<i8", {2}, {0, -1}));
            }).find("label at index 1 is -1"),
            std::string::npos);
  EXPECT_NE(io_error([&] {
              NpyDataset(x, npy<float>("frac.npy", "<f4", {2}, {0, 1.5f}));
            }).find("label at index 1 is 1.5"),
            std::string::npos);
  EXPECT_NE(io_error([&] {
              NpyDataset(x, npy<float>("nan.npy", "<f4", {2}, {NAN, 1}));
            }).find("label at index 0 is nan"),
            std::string::npos);
}

TEST_F(DataFiles, CsvHeadersTargetColumnsAndQuotedFields) {
  const auto csv = text("t.csv", "width, \"label\",height\r\n1.5,0,2\n\n\"3\",2,-4e1\n5,1,6\n");
  CsvDataset by_name(csv, "label");
  EXPECT_EQ(by_name.size(), 3);
  EXPECT_EQ(by_name.num_classes(), 3);
  EXPECT_EQ(by_name.feature_names(), (std::vector<std::string>{"width", "height"}));
  Batch b = by_name.get_batch({1});
  EXPECT_FLOAT_EQ(b.input.data_ptr<float>()[0], 3);
  EXPECT_FLOAT_EQ(b.input.data_ptr<float>()[1], -40);
  EXPECT_EQ(b.target.data_ptr<int64_t>()[0], 2);
  CsvDataset by_number(csv, "1");
  EXPECT_EQ(by_number.get_batch({2}).target.data_ptr<int64_t>()[0], 1);
  // No header: columns are numbered, the target is the last.
  CsvDataset bare(text("bare.csv", "1,2,0\n3,4,1\n"), "");
  EXPECT_EQ(bare.feature_names(), (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(bare.get_batch({1}).target.data_ptr<int64_t>()[0], 1);
}

TEST_F(DataFiles, MalformedCsvRowsNameTheFileLineAndColumn) {
  struct Case {
    std::string body, column, expect;
  };
  const std::vector<Case> cases = {
      {"a,b,y\n1,2,0\n1,x,1\n", "", "bad.csv:3: column 'b' holds 'x', not a number"},
      {"a,b,y\n1,2,0\n1,2\n", "", "bad.csv:3: 2 fields, but the table has 3 columns"},
      {"a,b,y\n1,2,0.5\n", "", "bad.csv:2: the target column 'y' holds 0.5, not a class number"},
      {"a,b,y\n1,,0\n", "", "bad.csv:2: column 'b' holds '', not a number"},
      {"a,b,y\n1,2,0\n", "z", "has no column 'z' (its columns: a, b, y)"},
      {"a,b,y\n", "", "has no data rows"},
      {"a,\"b,y\n1,2,0\n", "", "bad.csv:1: a quoted field is not closed"},
      {"a,b,y\n1,inf,0\n", "", "column 'b' holds 'inf', not a number"},
  };
  for (const Case& c : cases) {
    const auto file = text("bad.csv", c.body);
    const std::string e = io_error([&] { CsvDataset(file, c.column); });
    EXPECT_NE(e.find(c.expect), std::string::npos) << c.body << "\n" << e;
  }
}

TEST_F(DataFiles, ImageFoldersDecodePngAndJpegResizeAndLabelBySortedClass) {
  // root/cat (two PNGs), root/dog (one JPEG): labels 0, 0, 1.
  fs::create_directories(dir_ / "root" / "cat");
  fs::create_directories(dir_ / "root" / "dog");
  std::vector<uint8_t> rgb(4 * 6 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>(i * 3 % 256);
  ASSERT_TRUE(cohort::test::write_png(path("root/cat/a.png"), 6, 4, 3, rgb));
  std::vector<uint8_t> flat(4 * 6 * 3, 200);
  ASSERT_TRUE(cohort::test::write_png(path("root/cat/b.PNG"), 6, 4, 3, flat));
  cohort::test::write_jpeg(path("root/dog/c.jpg"), 6, 4, 3, flat);
  text("root/dog/notes.txt", "ignored");
  ImageFolderDataset d(path("root"), 2, 3, 3);
  EXPECT_EQ(d.size(), 3);
  EXPECT_EQ(d.class_names(), (std::vector<std::string>{"cat", "dog"}));
  Batch b = d.get_batch({0, 1, 2});
  ASSERT_EQ(b.input.sizes(), (Shape{3, 3, 2, 3}));
  const int64_t* y = b.target.data_ptr<int64_t>();
  EXPECT_EQ(std::vector<int64_t>(y, y + 3), (std::vector<int64_t>{0, 0, 1}));
  // A flat image stays flat through the resize (PNG exactly, JPEG within its loss).
  const float* x = b.input.data_ptr<float>();
  for (int i = 0; i < 18; ++i) EXPECT_FLOAT_EQ(x[18 + i], 200);
  for (int i = 0; i < 18; ++i) EXPECT_NEAR(x[36 + i], 200, 3);
  // Halving 6x4 to 3x2: each output pixel is the mean of a 2x2 block (half-pixel centres).
  const float* first = x;
  for (int c = 0; c < 3; ++c)
    for (int yy = 0; yy < 2; ++yy)
      for (int xx = 0; xx < 3; ++xx) {
        double sum = 0;
        for (int dy = 0; dy < 2; ++dy)
          for (int dx = 0; dx < 2; ++dx) sum += rgb[((2 * yy + dy) * 6 + 2 * xx + dx) * 3 + c];
        EXPECT_NEAR(first[(c * 2 + yy) * 3 + xx], sum / 4, 1e-4) << c << " " << yy << " " << xx;
      }
  // Grey decoding of RGB data: one channel.
  ImageFolderDataset grey(path("root"), 4, 6, 1);
  EXPECT_EQ(grey.get_batch({1}).input.sizes(), (Shape{1, 1, 4, 6}));
}

TEST_F(DataFiles, BrokenImagesAndFoldersAreNamed) {
  fs::create_directories(dir_ / "root" / "a");
  fs::create_directories(dir_ / "root" / "b");
  std::vector<uint8_t> px(16 * 3, 7);
  ASSERT_TRUE(cohort::test::write_png(path("root/a/ok.png"), 4, 4, 3, px));
  EXPECT_NE(io_error([&] {
              ImageFolderDataset(path("root"), 4, 4, 3);
            }).find("class directory " + path("root/b") + " has no .png, .jpg or .jpeg files"),
            std::string::npos);
  text("root/b/broken.png", "\x89PNG\r\n\x1a\nthis is not the rest of a PNG");
  text("root/b/fake.jpg", "just text");
  ImageFolderDataset d(path("root"), 4, 4, 3);
  EXPECT_NE(io_error([&] {
              d.get_batch({1});
            }).find("image " + path("root/b/broken.png") + " is not a readable PNG"),
            std::string::npos);
  EXPECT_NE(io_error([&] {
              d.get_batch({2});
            }).find("image " + path("root/b/fake.jpg") + " is neither a PNG nor a JPEG"),
            std::string::npos);
  // A truncated JPEG: libjpeg's error becomes an exception, never an exit.
  std::vector<uint8_t> big(64 * 64 * 3, 90);
  cohort::test::write_jpeg(path("whole.jpg"), 64, 64, 3, big);
  std::ifstream in(path("whole.jpg"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  text("root/b/cut.jpg", bytes.substr(0, 40));
  ImageFolderDataset cut(path("root"), 4, 4, 3);
  const std::string e = io_error([&] { cut.get_batch({2}); });  // b/: broken, cut, fake
  EXPECT_NE(e.find("cut.jpg is not a readable JPEG"), std::string::npos) << e;
}

// Normalisation: per channel, in float64, from the chosen samples only; applied on the way out.
TEST_F(DataFiles, NormalisationIsPerChannelAndComputedFromTheTrainingSamples) {
  // Channel 0 holds 0, 2; channel 1 holds 10, 10 (constant: std stays 1); sample 2 is held out.
  const auto x = npy<float>("x.npy", "<f4", {3, 2, 1}, {0, 10, 2, 10, 1000, 1000});
  NpyDataset d(x, npy<int64_t>("y.npy", "<i8", {3}, {0, 1, 0}));
  std::vector<int64_t> train{0, 1};
  Normalization n = compute_normalization(d, 100, 0, &train);
  EXPECT_EQ(n.mean, (std::vector<double>{1, 10}));
  EXPECT_EQ(n.std, (std::vector<double>{1, 1}));
  d.set_normalization(n);
  Batch b = d.get_batch({0, 1});
  const float* p = b.input.data_ptr<float>();
  EXPECT_EQ(std::vector<float>(p, p + 4), (std::vector<float>{-1, 0, 1, 0}));
  EXPECT_THROW(d.set_normalization({{1, 2, 3}, {1, 1, 1}}), InvalidArgument);
  EXPECT_THROW(d.set_normalization({{1}, {0}}), InvalidArgument);
}

TEST(Splits, SeededSplitsArePartitionsAndRepeat) {
  std::vector<int64_t> a, b, c, d;
  split_indices(100, 10, 7, a, b);
  split_indices(100, 10, 7, c, d);
  EXPECT_EQ(a, c);
  EXPECT_EQ(b, d);
  EXPECT_EQ(a.size(), 90u);
  EXPECT_EQ(b.size(), 10u);
  std::vector<int64_t> all = a;
  all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  for (int64_t i = 0; i < 100; ++i) EXPECT_EQ(all[static_cast<size_t>(i)], i);
  // Not simply the tail: a folder sorted by class would hold out only its last class.
  EXPECT_NE(b.front(), 90);
}

}  // namespace
}  // namespace cohort::core::data
