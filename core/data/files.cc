// npy, csv and image-folder datasets, their normalisation, and seeded splits.
#include "core/data/files.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "core/data/image.h"
#include "core/ops/ops.h"
#include "core/util/error.h"

namespace cohort::core::data {
namespace fs = std::filesystem;

// --- FileDataset

void FileDataset::set_normalization(Normalization n) {
  COHORT_CHECK(n.mean.size() == n.std.size(), "normalization: ", n.mean.size(), " means but ",
               n.std.size(), " standard deviations");
  if (!n.empty()) {
    const auto c = static_cast<size_t>(channels());
    COHORT_CHECK(c > 0, "normalization: this dataset's inputs are indices, not values");
    COHORT_CHECK(n.mean.size() == 1 || n.mean.size() == c, "normalization: ", n.mean.size(),
                 " values for inputs of ", c, " channels (give one, or one per channel)");
    for (double s : n.std)
      COHORT_CHECK(s > 0 && std::isfinite(s), "normalization: std ", s, " is not positive");
    if (n.mean.size() == 1 && c > 1) {
      n.mean.assign(c, n.mean[0]);
      n.std.assign(c, n.std[0]);
    }
  }
  norm_ = std::move(n);
}

Batch FileDataset::get_batch(const std::vector<int64_t>& indices) const {
  Batch b = raw_batch(indices);
  if (norm_.empty() || b.input.dtype() != DType::kFloat32) return b;
  const int64_t n = b.input.size(0), c = b.input.dim() > 1 ? b.input.size(1) : 1;
  const int64_t inner = n > 0 && c > 0 ? b.input.numel() / (n * c) : 0;
  float* p = b.input.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      const auto m = static_cast<float>(norm_.mean[static_cast<size_t>(ch)]);
      const auto inv = static_cast<float>(1.0 / norm_.std[static_cast<size_t>(ch)]);
      float* q = p + (i * c + ch) * inner;
      for (int64_t k = 0; k < inner; ++k) q[k] = (q[k] - m) * inv;
    }
  return b;
}

Normalization compute_normalization(const FileDataset& d, int64_t max_samples, uint64_t seed,
                                    const std::vector<int64_t>* among) {
  std::vector<int64_t> pick;
  if (among) {
    pick = *among;
  } else {
    pick.resize(static_cast<size_t>(d.size()));
    std::iota(pick.begin(), pick.end(), 0);
  }
  const auto n = static_cast<int64_t>(pick.size());
  if (n > max_samples) {
    std::mt19937_64 rng(seed);
    std::shuffle(pick.begin(), pick.end(), rng);
    pick.resize(static_cast<size_t>(max_samples));
    std::sort(pick.begin(), pick.end());  // sequential reads of a mapped file
  }
  const int64_t c = d.channels();
  Normalization out;
  if (c == 0 || pick.empty()) return out;
  std::vector<double> sum(static_cast<size_t>(c)), sq(static_cast<size_t>(c));
  int64_t per_channel = 0;
  for (size_t start = 0; start < pick.size(); start += 256) {
    std::vector<int64_t> chunk(
        pick.begin() + static_cast<std::ptrdiff_t>(start),
        pick.begin() + static_cast<std::ptrdiff_t>(std::min(pick.size(), start + 256)));
    Tensor x = d.raw_inputs(chunk);
    const int64_t b = x.size(0), inner = b > 0 && c > 0 ? x.numel() / (b * c) : 0;
    const float* p = x.data_ptr<float>();
    for (int64_t i = 0; i < b; ++i)
      for (int64_t ch = 0; ch < c; ++ch) {
        const float* q = p + (i * c + ch) * inner;
        double s = 0, s2 = 0;
        for (int64_t k = 0; k < inner; ++k) {
          s += q[k];
          s2 += static_cast<double>(q[k]) * q[k];
        }
        sum[static_cast<size_t>(ch)] += s;
        sq[static_cast<size_t>(ch)] += s2;
      }
    per_channel += b * inner;
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    const double mean = sum[static_cast<size_t>(ch)] / static_cast<double>(per_channel);
    const double var =
        std::max(0.0, sq[static_cast<size_t>(ch)] / static_cast<double>(per_channel) - mean * mean);
    out.mean.push_back(mean);
    // A constant channel keeps std 1 rather than dividing by zero.
    out.std.push_back(var > 1e-12 ? std::sqrt(var) : 1.0);
  }
  return out;
}

// --- npy

NpyDataset::NpyDataset(const std::string& inputs, const std::string& targets)
    : x_(std::make_unique<NpyArray>(inputs)), y_(std::make_unique<NpyArray>(targets)) {
  const auto& xs = x_->header().shape;
  const auto& ys = y_->header().shape;
  if (xs.empty() || xs[0] == 0)
    COHORT_THROW(IoError, inputs, " holds no samples (its shape must be [N, ...] with N > 0)");
  if (ys.size() != 1 && !(ys.size() == 2 && ys[1] == 1))
    COHORT_THROW(IoError, targets, " must be one label per sample, shape [N], got ", shape_str(ys));
  if (ys[0] != xs[0])
    COHORT_THROW(IoError, targets, " has ", ys[0], " labels but ", inputs, " has ", xs[0],
                 " samples");
  // uint8 and bool are pixel-like values; wider integers are indices (tokens, categories).
  const char k = x_->header().kind;
  index_inputs_ = (k == 'i' || k == 'u') && x_->header().itemsize > 1;
  // Labels are read and checked once: a bad one is named by its index, not found mid-epoch.
  labels_.resize(static_cast<size_t>(ys[0]));
  const bool float_labels = y_->header().kind == 'f';
  for (int64_t i = 0; i < ys[0]; ++i) {
    int64_t label = 0;
    if (float_labels) {
      float v = 0;
      y_->row_as_float(i, &v);
      if (!std::isfinite(v) || v != std::floor(v) || v < 0 || v > 2147483647.0f)
        COHORT_THROW(IoError, targets, ": label at index ", i, " is ", v,
                     ", not a class number (an integer >= 0)");
      label = static_cast<int64_t>(v);
    } else {
      y_->row_as_int64(i, &label);
      if (label < 0 || label > 2147483647)
        COHORT_THROW(IoError, targets, ": label at index ", i, " is ", label,
                     ", not a class number (an integer >= 0)");
    }
    labels_[static_cast<size_t>(i)] = label;
    classes_ = std::max(classes_, label + 1);
  }
}

int64_t NpyDataset::channels() const {
  if (index_inputs_) return 0;
  const auto& s = x_->header().shape;
  return s.size() >= 2 ? s[1] : 1;
}

Batch NpyDataset::raw_batch(const std::vector<int64_t>& indices) const {
  const auto b = static_cast<int64_t>(indices.size());
  Shape shape = x_->header().shape;
  shape[0] = b;
  const int64_t per = x_->row_numel();
  Tensor x = empty(shape, TensorOptions(index_inputs_ ? DType::kInt64 : DType::kFloat32));
  Tensor y = empty({b}, TensorOptions(DType::kInt64));
  for (int64_t i = 0; i < b; ++i) {
    const int64_t s = indices[static_cast<size_t>(i)];
    COHORT_CHECK(s >= 0 && s < size(), "npy: sample index ", s, " out of range");
    if (index_inputs_)
      x_->row_as_int64(s, x.data_ptr<int64_t>() + i * per);
    else
      x_->row_as_float(s, x.data_ptr<float>() + i * per);
    y.data_ptr<int64_t>()[i] = labels_[static_cast<size_t>(s)];
  }
  return {x, y};
}

// --- csv

namespace {

constexpr size_t kMaxCsvBytes = size_t{4} << 30;

// Splits one CSV line into fields; quoted fields may hold commas and doubled quotes.
std::vector<std::string> csv_fields(const std::string& line, const std::string& where) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false, was_quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cur += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cur += c;
      }
    } else if (c == '"' && cur.find_first_not_of(' ') == std::string::npos && !was_quoted) {
      quoted = was_quoted = true;
      cur.clear();
    } else if (c == ',') {
      out.push_back(cur);
      cur.clear();
      was_quoted = false;
    } else {
      cur += c;
    }
  }
  if (quoted) COHORT_THROW(IoError, where, ": a quoted field is not closed");
  out.push_back(cur);
  return out;
}

bool parse_number(const std::string& text, double& v) {
  const size_t b = text.find_first_not_of(" \t");
  if (b == std::string::npos) return false;
  const size_t e = text.find_last_not_of(" \t");
  const std::string t = text.substr(b, e - b + 1);
  char* end = nullptr;
  errno = 0;
  v = std::strtod(t.c_str(), &end);
  return end == t.c_str() + t.size() && errno != ERANGE && std::isfinite(v);
}

}  // namespace

CsvDataset::CsvDataset(const std::string& path, const std::string& target_column) {
  std::ifstream f(path, std::ios::binary);
  if (!f) COHORT_THROW(IoError, "cannot open ", path);
  f.seekg(0, std::ios::end);
  if (static_cast<size_t>(f.tellg()) > kMaxCsvBytes)
    COHORT_THROW(IoError, path, " is larger than 4 GiB; convert it to .npy");
  f.seekg(0);
  std::string line;
  int64_t line_no = 0;
  std::vector<std::string> header;
  size_t width = 0, target = 0;
  bool have_target = false;
  std::vector<double> row;
  while (std::getline(f, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    std::vector<std::string> fields = csv_fields(line, where);
    if (width == 0) {
      width = fields.size();
      if (width < 2)
        COHORT_THROW(IoError, where,
                     ": a table needs at least two columns (features and a target)");
      double v;
      const bool numeric = std::all_of(fields.begin(), fields.end(),
                                       [&](const std::string& s) { return parse_number(s, v); });
      if (!numeric) {
        header = fields;
        for (auto& h : header) {
          const size_t b = h.find_first_not_of(' '), e = h.find_last_not_of(' ');
          h = b == std::string::npos ? "" : h.substr(b, e - b + 1);
        }
      } else {
        for (size_t i = 0; i < width; ++i) header.push_back(std::to_string(i));
      }
      // The target column: by name, by number, or the last.
      if (target_column.empty()) {
        target = width - 1;
      } else if (auto it = std::find(header.begin(), header.end(), target_column);
                 it != header.end()) {
        target = static_cast<size_t>(it - header.begin());
      } else {
        char* end = nullptr;
        const long idx = std::strtol(target_column.c_str(), &end, 10);
        if (*end != '\0' || idx < 0 || static_cast<size_t>(idx) >= width) {
          std::string names;
          for (const auto& h : header) names += (names.empty() ? "" : ", ") + h;
          COHORT_THROW(IoError, path, " has no column '", target_column, "' (its columns: ", names,
                       ")");
        }
        target = static_cast<size_t>(idx);
      }
      have_target = true;
      for (size_t i = 0; i < width; ++i)
        if (i != target) names_.push_back(header[i]);
      if (!numeric) continue;
    }
    if (fields.size() != width)
      COHORT_THROW(IoError, where, ": ", fields.size(), " fields, but the table has ", width,
                   " columns");
    for (size_t i = 0; i < width; ++i) {
      double v;
      if (!parse_number(fields[i], v))
        COHORT_THROW(IoError, where, ": column '", header[i], "' holds '", fields[i],
                     "', not a number");
      if (i == target) {
        if (v != std::floor(v) || v < 0 || v > 2147483647.0)
          COHORT_THROW(IoError, where, ": the target column '", header[i], "' holds ", fields[i],
                       ", not a class number (an integer >= 0)");
        y_.push_back(static_cast<int64_t>(v));
        classes_ = std::max(classes_, y_.back() + 1);
      } else {
        x_.push_back(static_cast<float>(v));
      }
    }
  }
  if (!have_target || y_.empty()) COHORT_THROW(IoError, path, " has no data rows");
  rows_ = static_cast<int64_t>(y_.size());
  features_ = static_cast<int64_t>(width - 1);
}

Batch CsvDataset::raw_batch(const std::vector<int64_t>& indices) const {
  const auto b = static_cast<int64_t>(indices.size());
  Tensor x = empty({b, features_});
  Tensor y = empty({b}, TensorOptions(DType::kInt64));
  for (int64_t i = 0; i < b; ++i) {
    const int64_t s = indices[static_cast<size_t>(i)];
    COHORT_CHECK(s >= 0 && s < rows_, "csv: sample index ", s, " out of range");
    std::copy_n(x_.data() + s * features_, features_, x.data_ptr<float>() + i * features_);
    y.data_ptr<int64_t>()[i] = y_[static_cast<size_t>(s)];
  }
  return {x, y};
}

// --- image folder

ImageFolderDataset::ImageFolderDataset(const std::string& root, int64_t height, int64_t width,
                                       int channels)
    : height_(height), width_(width), channels_(channels) {
  COHORT_CHECK(height > 0 && width > 0 && height <= 8192 && width <= 8192,
               "image_folder: image size ", height, "x", width, " must be in 1..8192");
  COHORT_CHECK(channels == 1 || channels == 3, "image_folder: channels must be 1 or 3, got ",
               channels);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) COHORT_THROW(IoError, root, " is not a directory");
  for (auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory()) class_names_.push_back(e.path().filename().string());
  std::sort(class_names_.begin(), class_names_.end());
  if (class_names_.empty())
    COHORT_THROW(IoError, root,
                 " has no class directories (image_folder wants root/<class>/<image>)");
  for (size_t c = 0; c < class_names_.size(); ++c) {
    const fs::path dir = fs::path(root) / class_names_[c];
    std::vector<std::string> found;
    for (auto& e : fs::recursive_directory_iterator(dir, ec)) {
      if (!e.is_regular_file()) continue;
      std::string ext = e.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(),
                     [](unsigned char ch) { return std::tolower(ch); });
      if (ext == ".png" || ext == ".jpg" || ext == ".jpeg") found.push_back(e.path().string());
    }
    if (found.empty())
      COHORT_THROW(IoError, "class directory ", dir.string(), " has no .png, .jpg or .jpeg files");
    std::sort(found.begin(), found.end());
    for (auto& f : found) {
      files_.push_back(std::move(f));
      labels_.push_back(static_cast<int64_t>(c));
    }
  }
  classes_ = static_cast<int64_t>(class_names_.size());
}

Batch ImageFolderDataset::raw_batch(const std::vector<int64_t>& indices) const {
  const auto b = static_cast<int64_t>(indices.size());
  Tensor x = empty({b, channels_, height_, width_});
  Tensor y = empty({b}, TensorOptions(DType::kInt64));
  const int64_t per = channels_ * height_ * width_;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t s = indices[static_cast<size_t>(i)];
    COHORT_CHECK(s >= 0 && s < size(), "image_folder: sample index ", s, " out of range");
    const Image img = read_image(files_[static_cast<size_t>(s)], channels_);
    resize_bilinear_chw(img, height_, width_, x.data_ptr<float>() + i * per);
    y.data_ptr<int64_t>()[i] = labels_[static_cast<size_t>(s)];
  }
  return {x, y};
}

// --- splits

Batch Subset::get_batch(const std::vector<int64_t>& indices) const {
  std::vector<int64_t> mapped;
  mapped.reserve(indices.size());
  for (int64_t i : indices) {
    COHORT_CHECK(i >= 0 && i < size(), "subset: sample index ", i, " out of range");
    mapped.push_back(indices_[static_cast<size_t>(i)]);
  }
  return base_->get_batch(mapped);
}

void split_indices(int64_t n, int64_t held_out, uint64_t seed, std::vector<int64_t>& train,
                   std::vector<int64_t>& held) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  held_out = std::clamp<int64_t>(held_out, 0, n);
  train.assign(all.begin(), all.end() - held_out);
  held.assign(all.end() - held_out, all.end());
  // Sorted: a mapped file is read front to back, and the sampler shuffles anyway.
  std::sort(train.begin(), train.end());
  std::sort(held.begin(), held.end());
}

}  // namespace cohort::core::data
