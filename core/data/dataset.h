// Datasets, samplers and the prefetching loader. A Dataset turns a list of sample indices into a
// batch; a Sampler decides which indices each rank sees per epoch (DistributedSampler shards them);
// the DataLoader prepares the next batches on a background thread while the model trains.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/tensor/tensor.h"

namespace cohort::core::data {

struct Batch {
  Tensor input;
  Tensor target;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // Classes of its labels (the largest label + 1) where that is known, else 0.
  virtual int64_t num_classes() const { return 0; }
  // Builds a batch from sample indices; must be safe to call from the loader thread.
  virtual Batch get_batch(const std::vector<int64_t>& indices) const = 0;
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  // The indices this rank visits in `epoch`, in order.
  virtual std::vector<int64_t> indices(int64_t epoch) const = 0;
};

struct DistributedSamplerOptions {
  int64_t rank = 0;
  int64_t world_size = 1;
  bool shuffle = true;
  uint64_t seed = 0;
  // Without drop_last, indices are padded by wrapping so every rank gets the same count.
  bool drop_last = false;
};

// Shuffles all indices with (seed, epoch) — the same permutation on every rank — then gives rank r
// every world_size-th index starting at r. With world_size 1 it is a plain seeded random sampler.
class DistributedSampler : public Sampler {
 public:
  DistributedSampler(int64_t dataset_size, const DistributedSamplerOptions& o);
  std::vector<int64_t> indices(int64_t epoch) const override;
  int64_t num_samples() const { return num_samples_; }

 private:
  int64_t size_;
  DistributedSamplerOptions o_;
  int64_t num_samples_;
};

struct LoaderOptions {
  int64_t batch_size = 64;
  bool drop_last = true;
  int prefetch = 2;  // batches prepared ahead; 0 loads on the calling thread
};

// Iterates one epoch at a time. next() blocks until the background thread has the batch ready.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, std::shared_ptr<const Sampler> sampler,
             const LoaderOptions& o);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Starts `epoch` at batch `first_batch` (to resume mid-epoch).
  void start_epoch(int64_t epoch, int64_t first_batch = 0);
  // False when the epoch is over.
  bool next(Batch& out);
  int64_t batches_per_epoch() const;
  int64_t position() const { return position_; }  // batches handed out this epoch

 private:
  void stop();
  std::vector<int64_t> batch_indices(int64_t b) const;

  std::shared_ptr<const Dataset> dataset_;
  std::shared_ptr<const Sampler> sampler_;
  LoaderOptions o_;
  std::vector<int64_t> order_;
  int64_t num_batches_ = 0, position_ = 0, next_to_load_ = 0;

  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> ready_;
  bool stopping_ = false;
  std::exception_ptr error_;
};

// Fashion-MNIST (or MNIST) from IDX files, gzipped or not: images stay uint8 in memory and are
// normalised per batch to (x/255 - 0.2860)/0.3530 as float32 [B, 1, 28, 28].
class FashionMNIST : public Dataset {
 public:
  // split: "train" or "t10k". Throws IoError naming the file when it is missing or malformed.
  FashionMNIST(const std::string& dir, const std::string& split);
  int64_t size() const override { return n_; }
  int64_t num_classes() const override { return kClasses; }
  Batch get_batch(const std::vector<int64_t>& indices) const override;
  static constexpr double kMean = 0.2860, kStd = 0.3530;
  static constexpr int kClasses = 10;  // labels out of range are IoError naming the file

 private:
  int64_t n_ = 0, rows_ = 0, cols_ = 0;
  std::vector<uint8_t> images_, labels_;
};

// Byte-level language modelling over any file: sample i is the window [i*ctx, i*ctx + ctx] of
// bytes; input is the first ctx bytes, target the next ctx (both int64 [B, ctx]).
class ByteTextDataset : public Dataset {
 public:
  ByteTextDataset(const std::string& path, int64_t context);
  // Uses bytes [begin, end) of the file only (train/validation splits).
  ByteTextDataset(const std::string& path, int64_t context, double begin_frac, double end_frac);
  int64_t size() const override;
  Batch get_batch(const std::vector<int64_t>& indices) const override;

 private:
  std::vector<uint8_t> bytes_;
  int64_t context_;
};

// Token files in llm.c's format (what its fineweb/tinyshakespeare scripts write): a header of 256
// little-endian int32 (magic 20240520, version 1, token count), then the tokens as uint16. The file
// is mapped, not read, so a multi-gigabyte shard costs no memory up front. Sample i is the window
// of tokens [i*ctx, i*ctx + ctx]: input the first ctx, target the next ctx (int64 [B, ctx]).
class TokenFileDataset : public Dataset {
 public:
  // Uses tokens [begin_frac, end_frac) of the file. Throws IoError naming the file when it is
  // missing, not in that format, shorter than its header says, too short for one window, or holds
  // a token >= vocab (checked once, here).
  TokenFileDataset(const std::string& path, int64_t context, int64_t vocab, double begin_frac = 0,
                   double end_frac = 1);
  ~TokenFileDataset() override;
  TokenFileDataset(const TokenFileDataset&) = delete;
  TokenFileDataset& operator=(const TokenFileDataset&) = delete;
  int64_t size() const override;
  Batch get_batch(const std::vector<int64_t>& indices) const override;
  static constexpr int32_t kMagic = 20240520;
  static constexpr int64_t kHeaderInts = 256;

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  int64_t count_ = 0, context_;
};

// Uniformly random tokens in [0, vocab), the same for a given seed on every rank and every run:
// for measuring throughput without a dataset (the loss stays near log(vocab)).
class SyntheticTokenDataset : public Dataset {
 public:
  SyntheticTokenDataset(int64_t samples, int64_t context, int64_t vocab, uint64_t seed);
  int64_t size() const override { return samples_; }
  Batch get_batch(const std::vector<int64_t>& indices) const override;

 private:
  int64_t samples_, context_, vocab_;
  uint64_t seed_;
};

// The largest IDX data we load (8 GiB): a header whose dimensions multiply past it is malformed.
inline constexpr uint64_t kMaxIdxBytes = uint64_t{8} << 30;
// Reads an IDX file of unsigned bytes (optionally gzip-compressed) into bytes and its dimensions
// (1 to 4, none zero). Throws IoError naming the file when the header is malformed, its product
// overflows or passes kMaxIdxBytes, or the data is shorter or longer than the header says.
std::vector<uint8_t> read_idx(const std::string& path, std::vector<int64_t>& dims);

}  // namespace cohort::core::data
