// Building what a config names: the device, the datasets (built-in, or npy, csv and image_folder
// files with their split and normalisation), the model (built-in, written in the config, or a
// program's own), and the --print-model table.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/autograd/grad_mode.h"
#include "core/data/files.h"
#include "core/nn/models.h"
#include "core/tensor/cuda/cuda_device.h"
#include "trainer/model_builder.h"
#include "trainer/trainer.h"

namespace cohort::trainer {

using core::Tensor;

core::Device resolve_device(const DeviceSpec& spec, int local_rank, int local_world_size) {
  if (spec.kind == DeviceSpec::Kind::kCpu) return core::Device::cpu();
  const int gpus = core::cuda::device_count();
  // NCCL needs a GPU of its own for every rank of a node.
  if (spec.kind == DeviceSpec::Kind::kAuto)
    return gpus > 0 && gpus >= local_world_size ? core::Device::cuda(local_rank % gpus)
                                                : core::Device::cpu();
  if (gpus == 0)
    COHORT_THROW(ConfigError, "device ", spec.str(), " was requested but ",
                 core::cuda::unavailable_reason(), "; use device: cpu or auto");
  if (spec.index < 0) {
    if (local_world_size > gpus)
      COHORT_THROW(ConfigError, "device cuda: ", local_world_size, " ranks on this node share ",
                   gpus, gpus == 1 ? " GPU" : " GPUs",
                   ", and each rank needs one of its own; start at most ", gpus,
                   " per node (--nproc-per-node) or use device: cpu");
    return core::Device::cuda(local_rank);
  }
  if (spec.index >= gpus)
    COHORT_THROW(ConfigError, "device ", spec.str(), " does not exist: this machine has ", gpus,
                 gpus == 1 ? " GPU" : " GPUs");
  return core::Device::cuda(spec.index);
}

std::shared_ptr<core::nn::Module> build_model(const Config& c, core::Generator* gen,
                                              const Tensor& sample, int64_t data_classes) {
  using namespace core::nn;
  COHORT_CHECK(c.model.type != "custom",
               "model.type custom is built by the program that provides it "
               "(trainer::Extensions::model), not by build_model");
  if (c.model.spec) {
    COHORT_CHECK(sample.defined(), "build_model: model.type ", c.model.type,
                 " infers its sizes from a sample of the data; pass one");
    return build_config_model(*c.model.spec, sample, gen).module;
  }
  // mlp and cnn fit the data: its input size, and its classes where the data knows them.
  const int64_t classes = data_classes > 0 ? data_classes : 10;
  if (c.model.type == "mlp") {
    const int64_t in =
        sample.defined() ? sample.numel() / std::max<int64_t>(sample.size(0), 1) : 28 * 28;
    return std::make_shared<MLP>(in, c.model.hidden, classes, gen);
  }
  if (c.model.type == "cnn") {
    if (!sample.defined()) return std::make_shared<CNN>(1, classes, gen);
    if (sample.dim() != 4 || !core::is_floating(sample.dtype()))
      COHORT_THROW(ConfigError,
                   "model.type cnn needs images [N, C, H, W], but the data's inputs are ",
                   core::shape_str(sample.sizes()), "; use model.type mlp or sequential");
    return std::make_shared<CNN>(sample.size(1), classes, gen, sample.size(2), sample.size(3));
  }
  GPTConfig g;
  g.vocab_size = c.model.vocab;
  g.context = c.model.context;
  g.layers = c.model.layers;
  g.heads = c.model.heads;
  g.dim = c.model.dim;
  g.dropout = c.model.dropout;
  return std::make_shared<GPT>(g, gen);
}

namespace {

// npy, csv and image_folder: the dataset at `where` (data.path, or data.val_path's counterpart).
std::shared_ptr<core::data::FileDataset> open_file_dataset(const Config& c, bool validation) {
  namespace fs = std::filesystem;
  if (c.data.dataset == "npy") {
    if (!validation) return std::make_shared<core::data::NpyDataset>(c.data.inputs, c.data.targets);
    return std::make_shared<core::data::NpyDataset>(
        (fs::path(c.data.val_path) / fs::path(c.data.inputs).filename()).string(),
        (fs::path(c.data.val_path) / fs::path(c.data.targets).filename()).string());
  }
  const std::string& path = validation ? c.data.val_path : c.data.path;
  if (c.data.dataset == "csv")
    return std::make_shared<core::data::CsvDataset>(path, c.data.target_column);
  const int64_t h = c.data.image_size[0];
  const int64_t w = c.data.image_size.size() > 1 ? c.data.image_size[1] : h;
  return std::make_shared<core::data::ImageFolderDataset>(path, h, w,
                                                          static_cast<int>(c.data.channels));
}

void make_file_datasets(const Config& c, Datasets& d) {
  auto base = open_file_dataset(c, false);
  std::vector<int64_t> train_idx, held;
  std::shared_ptr<core::data::FileDataset> val;
  if (!c.data.val_path.empty()) {
    val = open_file_dataset(c, true);
    d.train = base;
    d.eval = val;
    train_idx.resize(static_cast<size_t>(base->size()));
    std::iota(train_idx.begin(), train_idx.end(), 0);
  } else {
    const auto n = base->size();
    const auto n_val =
        static_cast<int64_t>(std::floor(static_cast<double>(n) * c.data.val_fraction));
    core::data::split_indices(n, n_val, c.seed, train_idx, held);
    d.train = std::make_shared<core::data::Subset>(base, train_idx);
    if (!held.empty()) d.eval = std::make_shared<core::data::Subset>(base, held);
  }
  // The normalisation: given, computed once over (at most 10000, for images 1000) training
  // samples, or none; validation data gets the training data's.
  core::data::Normalization norm;
  if (c.data.normalize == "none" || base->channels() == 0) {
    d.normalization_source = base->channels() == 0 ? "none (integer inputs)" : "none";
  } else if (!c.data.mean.empty()) {
    norm.mean = c.data.mean;
    norm.std = c.data.std;
    d.normalization_source = "config";
  } else {
    const int64_t limit = c.data.dataset == "image_folder" ? 1000 : 10000;
    norm = core::data::compute_normalization(*base, limit, c.seed, &train_idx);
    d.normalization_source =
        "computed from " +
        std::to_string(std::min<int64_t>(limit, static_cast<int64_t>(train_idx.size()))) +
        " training samples";
  }
  try {
    base->set_normalization(norm);
    if (val) val->set_normalization(norm);
  } catch (const InvalidArgument& e) {
    COHORT_THROW(ConfigError, "data.mean/data.std: ", e.what());
  }
  d.mean = base->normalization().mean;
  d.std = base->normalization().std;
  if (val && val->num_classes() > base->num_classes())
    COHORT_THROW(IoError, "the validation data (", c.data.val_path, ") has labels up to ",
                 val->num_classes() - 1, " but the training data only up to ",
                 base->num_classes() - 1);
}

}  // namespace

Datasets make_datasets(const Config& c) {
  Datasets d;
  if (c.data.dataset == "npy" || c.data.dataset == "csv" || c.data.dataset == "image_folder") {
    make_file_datasets(c, d);
  } else if (c.data.dataset == "fashion_mnist") {
    d.train = std::make_shared<core::data::FashionMNIST>(c.data.path, "train");
    d.eval = std::make_shared<core::data::FashionMNIST>(c.data.path, "t10k");
  } else if (c.data.dataset == "synthetic") {
    d.train = std::make_shared<core::data::SyntheticTokenDataset>(
        c.data.synthetic_samples, c.model.context, c.model.vocab, c.seed);
    if (c.data.val_fraction > 0)
      d.eval = std::make_shared<core::data::SyntheticTokenDataset>(
          std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(c.data.synthetic_samples) *
                                                    c.data.val_fraction)),
          c.model.context, c.model.vocab, c.seed + 1);
  } else if (c.data.dataset == "tokens" && !c.data.val_path.empty()) {
    d.train =
        std::make_shared<core::data::TokenFileDataset>(c.data.path, c.model.context, c.model.vocab);
    d.eval = std::make_shared<core::data::TokenFileDataset>(c.data.val_path, c.model.context,
                                                            c.model.vocab);
  } else {
    // One file: its tail (data.val_fraction) is held out for evaluation.
    const double split = 1.0 - c.data.val_fraction;
    const bool tokens = c.data.dataset == "tokens";
    auto part = [&](double b, double e) -> std::shared_ptr<core::data::Dataset> {
      if (tokens)
        return std::make_shared<core::data::TokenFileDataset>(c.data.path, c.model.context,
                                                              c.model.vocab, b, e);
      return std::make_shared<core::data::ByteTextDataset>(c.data.path, c.model.context, b, e);
    };
    d.train = part(0.0, split);
    if (c.data.val_fraction > 0) d.eval = part(split, 1.0);
  }
  return d;
}

std::string describe_model(const Config& c, const Extensions& ext) {
  check_extensions(c, ext);
  Datasets data = c.data.dataset == "custom" ? ext.data(c) : make_datasets(c);
  const Tensor sample = data.train->get_batch({0}).input;
  core::Generator gen(c.seed);
  if (c.model.spec) {
    BuiltModel m = build_config_model(*c.model.spec, sample, &gen);
    return format_model_summary(m.layers, m.module->num_parameters());
  }
  auto model = c.model.type == "custom" ? ext.model(c, sample, &gen)
                                        : build_model(c, &gen, sample, data.train->num_classes());
  std::vector<LayerSummary> rows;
  {
    core::autograd::NoGradGuard guard;
    model->eval();
    rows.push_back({"(model " + c.model.type + ")", "output", model->forward(sample).sizes(), 0});
  }
  for (const auto& [name, p] : model->named_parameters())
    rows.push_back({name, "parameter " + core::shape_str(p.sizes()), {}, p.numel()});
  return format_model_summary(rows, model->num_parameters());
}

void check_extensions(const Config& c, const Extensions& ext) {
  if (c.model.type == "custom" && !ext.model)
    COHORT_THROW(ConfigError,
                 "model.type custom is a model that a C++ program provides (launcher::train_main "
                 "with trainer::Extensions::model, as examples/custom_model does); `cohort train` "
                 "has none: use mlp, cnn, gpt, sequential or graph");
  if (c.data.dataset == "custom" && !ext.data)
    COHORT_THROW(ConfigError,
                 "data.dataset custom is data that a C++ program provides (launcher::train_main "
                 "with trainer::Extensions::data, as examples/custom_model does); `cohort train` "
                 "has none");
}

}  // namespace cohort::trainer
