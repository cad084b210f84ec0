// Datasets read from a user's files: NumPy arrays (.npy, mapped), CSV tables and image folders
// (one sub-directory per class). Inputs are float32 [N, ...] normalised per channel (dim 1) by a
// Normalization the caller sets (given in the config, or computed once with
// compute_normalization); integer .npy inputs wider than one byte stay int64 (indices for an
// embedding); one-byte integers and bools are values (pixels) and become floats. Targets are int64
// class labels. Every malformed file is an IoError naming the file and the row, column or index.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/data/npy.h"

namespace cohort::core::data {

// (x - mean[c]) / std[c] for channel c (dim 1 of a batch; the feature of a [N, F] table). One
// value applies to every channel; empty means none.
struct Normalization {
  std::vector<double> mean, std;
  bool empty() const { return mean.empty(); }
};

// A dataset whose float inputs are normalised as it hands them out.
class FileDataset : public Dataset {
 public:
  // Before any loader uses the dataset. Throws InvalidArgument for a size that fits no channel
  // count or a std that is not positive.
  void set_normalization(Normalization n);
  const Normalization& normalization() const { return norm_; }
  int64_t num_classes() const override { return classes_; }
  // Channels of one input (dim 1 of a batch), for the normalisation's size; 0 for index data.
  virtual int64_t channels() const = 0;
  Batch get_batch(const std::vector<int64_t>& indices) const final;
  // The inputs before normalisation (for computing it).
  Tensor raw_inputs(const std::vector<int64_t>& indices) const { return raw_batch(indices).input; }

 protected:
  // The batch without normalisation.
  virtual Batch raw_batch(const std::vector<int64_t>& indices) const = 0;
  int64_t classes_ = 0;

 private:
  Normalization norm_;
};

// Per-channel mean and standard deviation of the raw inputs of up to `max_samples` samples (a
// seeded choice when there are more) among `among` (all samples when null), in float64.
Normalization compute_normalization(const FileDataset& d, int64_t max_samples, uint64_t seed,
                                    const std::vector<int64_t>* among = nullptr);

// data.dataset npy: inputs [N, ...] of any float or integer dtype; targets [N] integer labels
// (or integral floats) >= 0.
class NpyDataset : public FileDataset {
 public:
  NpyDataset(const std::string& inputs, const std::string& targets);
  int64_t size() const override { return x_->rows(); }
  int64_t channels() const override;

 private:
  Batch raw_batch(const std::vector<int64_t>& indices) const override;
  std::unique_ptr<NpyArray> x_, y_;
  bool index_inputs_ = false;
  std::vector<int64_t> labels_;
};

// data.dataset csv: a header row of names (or none: columns are numbered from 0), then numeric
// rows; `target_column` (a name or number; empty: the last column) holds integer labels, every
// other column is a float feature: inputs [N, F].
class CsvDataset : public FileDataset {
 public:
  CsvDataset(const std::string& path, const std::string& target_column);
  int64_t size() const override { return rows_; }
  int64_t channels() const override { return features_; }
  const std::vector<std::string>& feature_names() const { return names_; }

 private:
  Batch raw_batch(const std::vector<int64_t>& indices) const override;
  int64_t rows_ = 0, features_ = 0;
  std::vector<float> x_;
  std::vector<int64_t> y_;
  std::vector<std::string> names_;
};

// data.dataset image_folder: root/<class>/<image>.png|jpg|jpeg, classes in sorted order (as
// torchvision's ImageFolder), decoded on the loader thread and resized to height x width:
// inputs [N, channels, height, width] of 0..255 before normalisation.
class ImageFolderDataset : public FileDataset {
 public:
  ImageFolderDataset(const std::string& root, int64_t height, int64_t width, int channels);
  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  int64_t channels() const override { return channels_; }
  const std::vector<std::string>& class_names() const { return class_names_; }

 private:
  Batch raw_batch(const std::vector<int64_t>& indices) const override;
  int64_t height_, width_;
  int channels_;
  std::vector<std::string> files_, class_names_;
  std::vector<int64_t> labels_;
};

// The samples `indices` of another dataset (a train/validation split).
class Subset : public Dataset {
 public:
  Subset(std::shared_ptr<const Dataset> base, std::vector<int64_t> indices)
      : base_(std::move(base)), indices_(std::move(indices)) {}
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  int64_t num_classes() const override { return base_->num_classes(); }
  Batch get_batch(const std::vector<int64_t>& indices) const override;

 private:
  std::shared_ptr<const Dataset> base_;
  std::vector<int64_t> indices_;
};

// A seeded split of [0, n): the first `n - held_out` of a permutation, and the rest.
void split_indices(int64_t n, int64_t held_out, uint64_t seed, std::vector<int64_t>& train,
                   std::vector<int64_t>& held);

}  // namespace cohort::core::data
