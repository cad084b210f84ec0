// Language-model datasets: llm.c token files (windows, splits, every malformed-file error) and
// synthetic tokens (deterministic per sample index, in range).
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <vector>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "test_util.h"

namespace cohort::core::data {
namespace {

class TokenFiles : public cohort::test::TempDirTest {
 protected:
  // Writes an llm.c token file holding `tokens`; header fields can be overridden.
  std::string write(const std::vector<uint16_t>& tokens, int32_t magic = TokenFileDataset::kMagic,
                    int32_t version = 1, int64_t claimed = -1) {
    const std::string path = (dir_ / ("t" + std::to_string(files_++) + ".bin")).string();
    std::vector<int32_t> header(TokenFileDataset::kHeaderInts, 0);
    header[0] = magic;
    header[1] = version;
    header[2] = static_cast<int32_t>(claimed >= 0 ? claimed : static_cast<int64_t>(tokens.size()));
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(header.data()), header.size() * 4);
    f.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
    return path;
  }
  std::string error_of(const std::string& path, int64_t context, int64_t vocab) {
    try {
      TokenFileDataset d(path, context, vocab);
      return "";
    } catch (const IoError& e) {
      return e.what();
    }
  }
  int files_ = 0;
};

TEST_F(TokenFiles, WindowsGiveInputsAndNextTokenTargets) {
  std::vector<uint16_t> tokens;
  for (uint16_t i = 0; i < 21; ++i) tokens.push_back(static_cast<uint16_t>(50000 + i));
  TokenFileDataset d(write(tokens), 4, 50257);
  EXPECT_EQ(d.size(), 5);  // (21 - 1) / 4
  Batch b = d.get_batch({2, 0});
  ASSERT_EQ(b.input.sizes(), (Shape{2, 4}));
  const int64_t* x = b.input.data_ptr<int64_t>();
  const int64_t* y = b.target.data_ptr<int64_t>();
  EXPECT_EQ(std::vector<int64_t>(x, x + 8),
            (std::vector<int64_t>{50008, 50009, 50010, 50011, 50000, 50001, 50002, 50003}));
  EXPECT_EQ(std::vector<int64_t>(y, y + 4), (std::vector<int64_t>{50009, 50010, 50011, 50012}));
  // The tail held out for evaluation starts where the training part ends.
  TokenFileDataset tail(write(tokens), 4, 50257, 0.5, 1.0);
  EXPECT_EQ(tail.get_batch({0}).input.data_ptr<int64_t>()[0], 50010);
}

TEST_F(TokenFiles, MalformedFilesAreOneSentenceNamingTheFile) {
  const std::vector<uint16_t> ten(10, 7);
  std::string p = write(ten, 12345);
  EXPECT_NE(error_of(p, 4, 256).find("token file " + p + " is not in llm.c's format (magic 12345"),
            std::string::npos);
  p = write(ten, TokenFileDataset::kMagic, 2);
  EXPECT_NE(error_of(p, 4, 256).find("has version 2"), std::string::npos);
  p = write(ten, TokenFileDataset::kMagic, 1, 100);
  EXPECT_NE(error_of(p, 4, 256).find("says it holds 100 tokens but has room for 10"),
            std::string::npos);
  p = write(ten);
  EXPECT_NE(error_of(p, 16, 256).find("has 10 tokens in this split; need at least 17"),
            std::string::npos);
  EXPECT_NE(error_of(p, 4, 5).find("holds token 7 but the vocabulary has 5"), std::string::npos);
  EXPECT_NE(error_of((dir_ / "missing.bin").string(), 4, 256).find("cannot open token file"),
            std::string::npos);
  {
    std::ofstream short_file(dir_ / "short.bin");
    short_file << "abc";
  }
  EXPECT_NE(error_of((dir_ / "short.bin").string(), 4, 256).find("shorter than llm.c's"),
            std::string::npos);
}

TEST(SyntheticTokens, EachSampleIsFixedByItsIndexAndInRange) {
  SyntheticTokenDataset d(100, 8, 50257, 3);
  EXPECT_EQ(d.size(), 100);
  Batch a = d.get_batch({5, 9}), b = d.get_batch({9});
  const int64_t* ax = a.input.data_ptr<int64_t>();
  const int64_t* ay = a.target.data_ptr<int64_t>();
  const int64_t* bx = b.input.data_ptr<int64_t>();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(ax[8 + t], bx[t]);
  for (int t = 0; t + 1 < 8; ++t) EXPECT_EQ(ay[t], ax[t + 1]);  // targets are the next tokens
  std::vector<int64_t> all(ax, ax + 16);
  for (int64_t v : all) {
    EXPECT_GE(v, 0);
    EXPECT_LT(v, 50257);
  }
  EXPECT_NE(std::vector<int64_t>(ax, ax + 8), std::vector<int64_t>(ax + 8, ax + 16));
  SyntheticTokenDataset other_seed(100, 8, 50257, 4);
  EXPECT_NE(other_seed.get_batch({5}).input.data_ptr<int64_t>()[0], ax[0]);
}

}  // namespace
}  // namespace cohort::core::data
