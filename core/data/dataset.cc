// Samplers, the prefetching DataLoader, and the Fashion-MNIST, byte-text and token datasets.
#include "core/data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "core/ops/ops.h"

namespace cohort::core::data {
namespace {

// Sample i of a language-model dataset: input tokens [i*ctx, i*ctx + ctx), target the same window
// one token later (int64 [B, ctx] each).
template <typename Token>
Batch windows(const std::vector<int64_t>& indices, int64_t context, const Token* tokens) {
  const int64_t b = static_cast<int64_t>(indices.size());
  Tensor x = empty({b, context}, TensorOptions(DType::kInt64));
  Tensor y = empty({b, context}, TensorOptions(DType::kInt64));
  int64_t* xp = x.data_ptr<int64_t>();
  int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) {
    const Token* w = tokens + indices[static_cast<size_t>(i)] * context;
    for (int64_t t = 0; t < context; ++t) {
      xp[i * context + t] = w[t];
      yp[i * context + t] = w[t + 1];
    }
  }
  return {x, y};
}

}  // namespace

DistributedSampler::DistributedSampler(int64_t dataset_size, const DistributedSamplerOptions& o)
    : size_(dataset_size), o_(o) {
  COHORT_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size,
               "DistributedSampler: rank ", o.rank, " is outside world size ", o.world_size);
  num_samples_ = o.drop_last ? size_ / o.world_size : (size_ + o.world_size - 1) / o.world_size;
}

std::vector<int64_t> DistributedSampler::indices(int64_t epoch) const {
  std::vector<int64_t> all(static_cast<size_t>(size_));
  for (int64_t i = 0; i < size_; ++i) all[i] = i;
  if (o_.shuffle) {
    Generator g(o_.seed + static_cast<uint64_t>(epoch));
    for (int64_t i = size_ - 1; i > 0; --i)
      std::swap(all[i], all[g.below(static_cast<uint64_t>(i + 1))]);
  }
  const int64_t total = num_samples_ * o_.world_size;
  for (int64_t i = size_; i < total && size_ > 0; ++i) all.push_back(all[i % size_]);
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(num_samples_));
  for (int64_t i = o_.rank; i < total; i += o_.world_size) mine.push_back(all[i]);
  return mine;
}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset,
                       std::shared_ptr<const Sampler> sampler, const LoaderOptions& o)
    : dataset_(std::move(dataset)), sampler_(std::move(sampler)), o_(o) {
  COHORT_CHECK(o.batch_size > 0, "DataLoader: batch_size must be positive, got ", o.batch_size);
}

DataLoader::~DataLoader() { stop(); }

void DataLoader::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  ready_.clear();
  stopping_ = false;
  error_ = nullptr;
}

int64_t DataLoader::batches_per_epoch() const { return num_batches_; }

std::vector<int64_t> DataLoader::batch_indices(int64_t b) const {
  auto begin = order_.begin() + b * o_.batch_size;
  auto end = order_.begin() +
             std::min<int64_t>((b + 1) * o_.batch_size, static_cast<int64_t>(order_.size()));
  return {begin, end};
}

void DataLoader::start_epoch(int64_t epoch, int64_t first_batch) {
  stop();
  order_ = sampler_->indices(epoch);
  const int64_t n = static_cast<int64_t>(order_.size());
  num_batches_ = o_.drop_last ? n / o_.batch_size : (n + o_.batch_size - 1) / o_.batch_size;
  position_ = std::min(first_batch, num_batches_);
  next_to_load_ = position_;
  if (o_.prefetch <= 0) return;
  worker_ = std::thread([this] {
    while (true) {
      int64_t b;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || static_cast<int>(ready_.size()) < o_.prefetch; });
        if (stopping_ || next_to_load_ >= num_batches_) return;
        b = next_to_load_++;
      }
      Batch batch;
      try {
        batch = dataset_->get_batch(batch_indices(b));
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        error_ = std::current_exception();
        cv_.notify_all();
        return;
      }
      std::lock_guard<std::mutex> lk(mu_);
      ready_.push_back(std::move(batch));
      cv_.notify_all();
    }
  });
}

bool DataLoader::next(Batch& out) {
  if (position_ >= num_batches_) return false;
  if (o_.prefetch <= 0) {
    out = dataset_->get_batch(batch_indices(position_++));
    return true;
  }
  std::unique_lock<std::mutex> lk(mu_);
  // The worker always makes progress or records an error, so this wait ends.
  cv_.wait(lk, [&] { return !ready_.empty() || error_; });
  if (error_) std::rethrow_exception(error_);
  out = std::move(ready_.front());
  ready_.pop_front();
  ++position_;
  cv_.notify_all();
  return true;
}

std::vector<uint8_t> read_idx(const std::string& path, std::vector<int64_t>& dims) {
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (!f) COHORT_THROW(IoError, "cannot open data file ", path);
  std::unique_ptr<gzFile_s, decltype(&gzclose)> closer(f, gzclose);
  // Reads exactly n bytes; false at the end of the data.
  auto read = [&](void* into, size_t n) {
    size_t got = 0;
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1 << 20));
      const int r = gzread(f, static_cast<char*>(into) + got, chunk);
      if (r < 0) COHORT_THROW(IoError, "cannot decompress data file ", path);
      if (r == 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  };
  uint8_t magic[4];
  if (!read(magic, 4) || magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08)
    COHORT_THROW(IoError, "data file ", path, " is not an IDX file of unsigned bytes");
  const int nd = magic[3];
  if (nd < 1 || nd > 4)
    COHORT_THROW(IoError, "data file ", path, " has ", nd, " dimensions; expected 1 to 4");
  dims.clear();
  // The product is checked at every step against the largest data set we would hold, so no
  // header can make it wrap around to a plausible size.
  uint64_t total = 1;
  for (int i = 0; i < nd; ++i) {
    uint8_t p[4];
    if (!read(p, 4)) COHORT_THROW(IoError, "data file ", path, " is truncated in its header");
    const uint64_t d =
        (uint64_t{p[0]} << 24) | (uint64_t{p[1]} << 16) | (uint64_t{p[2]} << 8) | p[3];
    if (d == 0 || __builtin_mul_overflow(total, d, &total) || total > kMaxIdxBytes)
      COHORT_THROW(IoError, "data file ", path, " has impossible dimensions in its header (",
                   "dimension ", i, " is ", d, "; the data may hold at most ", kMaxIdxBytes,
                   " bytes)");
    dims.push_back(static_cast<int64_t>(d));
  }
  // Grown as the data arrives, never sized from the header alone: a header that promises more
  // than the file holds costs only what the file holds.
  std::vector<uint8_t> bytes;
  size_t have = 0;
  while (have < total) {
    const size_t step = std::min<size_t>(total - have, size_t{1} << 20);
    bytes.resize(have + step);
    if (!read(bytes.data() + have, step)) {
      COHORT_THROW(IoError, "data file ", path, " holds less data than its header says (", total,
                   " bytes)");
    }
    have += step;
  }
  uint8_t extra;
  if (read(&extra, 1))
    COHORT_THROW(IoError, "data file ", path, " holds more data than its header says (", total,
                 " bytes)");
  return bytes;
}

namespace {
std::string find_file(const std::string& dir, const std::string& base) {
  for (const char* ext : {".gz", ""}) {
    std::string p = dir + "/" + base + ext;
    if (std::ifstream(p).good()) return p;
  }
  COHORT_THROW(IoError, "data file ", dir, "/", base,
               ".gz is missing (install Debian's dataset-fashion-mnist, or give the directory "
               "that holds the IDX files)");
}
}  // namespace

FashionMNIST::FashionMNIST(const std::string& dir, const std::string& split) {
  std::vector<int64_t> di, dl;
  std::string ip = find_file(dir, split + "-images-idx3-ubyte");
  std::string lp = find_file(dir, split + "-labels-idx1-ubyte");
  images_ = read_idx(ip, di);
  labels_ = read_idx(lp, dl);
  if (di.size() != 3) COHORT_THROW(IoError, "data file ", ip, " is not a 3-D image array");
  if (dl.size() != 1 || dl[0] != di[0])
    COHORT_THROW(IoError, "data file ", lp, " has a different sample count from ", ip);
  for (size_t i = 0; i < labels_.size(); ++i)
    if (labels_[i] >= kClasses)
      COHORT_THROW(IoError, "data file ", lp, " holds label ", int{labels_[i]}, " for sample ", i,
                   "; Fashion-MNIST's labels are 0 to ", kClasses - 1);
  n_ = di[0];
  rows_ = di[1];
  cols_ = di[2];
}

Batch FashionMNIST::get_batch(const std::vector<int64_t>& indices) const {
  const int64_t b = static_cast<int64_t>(indices.size()), px = rows_ * cols_;
  Tensor x = empty({b, 1, rows_, cols_});
  Tensor y = empty({b}, TensorOptions(DType::kInt64));
  float* xp = x.data_ptr<float>();
  int64_t* yp = y.data_ptr<int64_t>();
  const float scale = static_cast<float>(1.0 / (255.0 * kStd)),
              shift = static_cast<float>(kMean / kStd);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t s = indices[i];
    COHORT_CHECK(s >= 0 && s < n_, "FashionMNIST: sample index ", s, " out of range");
    const uint8_t* src = images_.data() + s * px;
    float* dst = xp + i * px;
    for (int64_t p = 0; p < px; ++p) dst[p] = static_cast<float>(src[p]) * scale - shift;
    yp[i] = labels_[s];
  }
  return {x, y};
}

ByteTextDataset::ByteTextDataset(const std::string& path, int64_t context)
    : ByteTextDataset(path, context, 0.0, 1.0) {}

ByteTextDataset::ByteTextDataset(const std::string& path, int64_t context, double begin_frac,
                                 double end_frac)
    : context_(context) {
  std::ifstream f(path, std::ios::binary);
  if (!f) COHORT_THROW(IoError, "cannot open text file ", path);
  std::vector<uint8_t> all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t b = static_cast<size_t>(begin_frac * static_cast<double>(all.size()));
  size_t e = static_cast<size_t>(end_frac * static_cast<double>(all.size()));
  bytes_.assign(all.begin() + static_cast<std::ptrdiff_t>(b),
                all.begin() + static_cast<std::ptrdiff_t>(e));
  if (static_cast<int64_t>(bytes_.size()) < context + 1) {
    COHORT_THROW(IoError, "text file ", path, " has ", bytes_.size(),
                 " bytes in this split; need at least ", context + 1, " for context ", context);
  }
}

int64_t ByteTextDataset::size() const {
  return (static_cast<int64_t>(bytes_.size()) - 1) / context_;
}

Batch ByteTextDataset::get_batch(const std::vector<int64_t>& indices) const {
  return windows(indices, context_, bytes_.data());
}

TokenFileDataset::TokenFileDataset(const std::string& path, int64_t context, int64_t vocab,
                                   double begin_frac, double end_frac)
    : context_(context) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) COHORT_THROW(IoError, "cannot open token file ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size < kHeaderInts * 4) {
    ::close(fd);
    COHORT_THROW(IoError, "token file ", path, " is shorter than llm.c's 1024-byte header");
  }
  map_bytes_ = static_cast<size_t>(st.st_size);
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    COHORT_THROW(IoError, "cannot map token file ", path, ": ", std::strerror(errno));
  }
  int32_t header[3];
  std::memcpy(header, map_, sizeof header);
  const auto fail = [&](const std::string& why) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    COHORT_THROW(IoError, "token file ", path, " ", why);
  };
  if (header[0] != kMagic)
    fail("is not in llm.c's format (magic " + std::to_string(header[0]) + ", expected " +
         std::to_string(kMagic) + ")");
  if (header[1] != 1)
    fail("has version " + std::to_string(header[1]) + "; only 1 (uint16) is read");
  const int64_t total = header[2];
  if (total < 0 || static_cast<size_t>(kHeaderInts * 4 + total * 2) > map_bytes_)
    fail("says it holds " + std::to_string(total) + " tokens but has room for " +
         std::to_string((static_cast<int64_t>(map_bytes_) - kHeaderInts * 4) / 2));
  const int64_t b = static_cast<int64_t>(begin_frac * static_cast<double>(total));
  const int64_t e = static_cast<int64_t>(end_frac * static_cast<double>(total));
  tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map_) + kHeaderInts * 4) + b;
  count_ = e - b;
  if (count_ < context + 1)
    fail("has " + std::to_string(count_) + " tokens in this split; need at least " +
         std::to_string(context + 1) + " for context " + std::to_string(context));
  // A token the embedding has no row for would read out of bounds later; say so now.
  const uint16_t top = *std::max_element(tokens_, tokens_ + count_);
  if (top >= vocab)
    fail("holds token " + std::to_string(top) + " but the vocabulary has " + std::to_string(vocab) +
         " (tokens 0 to " + std::to_string(vocab - 1) + ")");
}

TokenFileDataset::~TokenFileDataset() {
  if (map_) ::munmap(map_, map_bytes_);
}

int64_t TokenFileDataset::size() const { return (count_ - 1) / context_; }

Batch TokenFileDataset::get_batch(const std::vector<int64_t>& indices) const {
  return windows(indices, context_, tokens_);
}

SyntheticTokenDataset::SyntheticTokenDataset(int64_t samples, int64_t context, int64_t vocab,
                                             uint64_t seed)
    : samples_(samples), context_(context), vocab_(vocab), seed_(seed) {
  COHORT_CHECK(samples > 0 && context > 0 && vocab > 0,
               "synthetic tokens need positive samples, context and vocab");
}

Batch SyntheticTokenDataset::get_batch(const std::vector<int64_t>& indices) const {
  const int64_t b = static_cast<int64_t>(indices.size());
  Tensor x = empty({b, context_}, TensorOptions(DType::kInt64));
  Tensor y = empty({b, context_}, TensorOptions(DType::kInt64));
  int64_t* xp = x.data_ptr<int64_t>();
  int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) {
    // Each sample's tokens depend on (seed, index) only, so any loader order sees the same data.
    Generator g(seed_ * 0x9e3779b97f4a7c15ULL +
                static_cast<uint64_t>(indices[static_cast<size_t>(i)]));
    int64_t prev = static_cast<int64_t>(g.below(static_cast<uint64_t>(vocab_)));
    for (int64_t t = 0; t < context_; ++t) {
      const int64_t next = static_cast<int64_t>(g.below(static_cast<uint64_t>(vocab_)));
      xp[i * context_ + t] = prev;
      yp[i * context_ + t] = next;
      prev = next;
    }
  }
  return {x, y};
}

}  // namespace cohort::core::data
