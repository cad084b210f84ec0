// The experiment config: YAML plus `key.path=value` overrides, validated against a schema so that
// every mistake becomes one ConfigError sentence naming the key and where it came from (file:line
// or the command line). Keys and defaults are documented in the README's "Config reference".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "collectives/ddp/comm_hook.h"
#include "core/optim/optimizer.h"
#include "parameter_server/codec.h"
#include "parameter_server/shard.h"
#include "trainer/model_spec.h"

namespace cohort::trainer {

// The settings that choose code paths are parsed once, here, into these types; nothing below
// the config compares their spellings again.

// distributed.strategy: what keeps a worker's replica in step with the others.
//   none              one process
//   ddp               replicas; gradients all-reduced
//   zero1             replicas; gradients reduce-scattered, optimiser state sharded
//   zero2             as zero1, and no full-size gradient outlives its bucket's reduction
//   fsdp              parameters sharded too, gathered per unit around its forward and backward
//   parameter_server  the servers hold the parameters and apply the optimiser
enum class Strategy { kNone, kDdp, kZero1, kZero2, kFsdp, kParameterServer };
const char* strategy_name(Strategy s);
// True for the strategies whose ranks step together through collectives.
inline bool data_parallel(Strategy s) {
  return s != Strategy::kNone && s != Strategy::kParameterServer;
}

// distributed.backend; kAuto: nccl when the worker trains on a GPU, else cpu.
enum class Backend { kAuto, kCpu, kNccl, kMpi };
const char* backend_name(Backend b);

// precision: see Config::precision.
enum class Precision { kFp32, kBf16, kFp16, kFp64 };
const char* precision_name(Precision p);

// device: auto | cpu | cuda | cuda:N.
struct DeviceSpec {
  enum class Kind { kAuto, kCpu, kCuda };
  Kind kind = Kind::kAuto;
  int index = -1;  // cuda:N; -1: the node's GPU number local_rank
  // Throws ConfigError for anything but the four forms.
  static DeviceSpec parse(const std::string& text);
  std::string str() const;
};

// parameter_server.transport: auto (shared memory to a server on the worker's node) | grpc.
enum class PsTransport { kAuto, kGrpc };

struct ModelConfig {
  std::string type;  // mlp | cnn | gpt | sequential | graph
  // sequential and graph: the layers or nodes, checked (model_spec.h).
  std::shared_ptr<const ModelSpec> spec;
  YAML::Node args;  // custom: the program's own settings (model.args), undefined when absent
  std::vector<int64_t> hidden;                             // mlp
  int64_t layers = 2, heads = 4, dim = 128, context = 64;  // gpt
  int64_t vocab = 256;                                     // gpt: 256 bytes, 50257 for GPT-2
  double dropout = 0.0;
  // A safetensors file of initial weights (names and shapes as the model's state_dict), e.g.
  // written by PyTorch; empty: initialise from the seed.
  std::string init_from;
};

struct DataConfig {
  std::string dataset;  // fashion_mnist | text | tokens | synthetic | npy | csv | image_folder
  std::string path;
  // tokens, csv: a separate validation file; npy: a directory with arrays named as inputs and
  // targets; image_folder: another root of class directories.
  std::string val_path;
  std::string inputs, targets;        // npy: the arrays
  std::string target_column;          // csv: a name or number; empty: the last column
  std::vector<int64_t> image_size;    // image_folder: [height, width] or [side]
  int64_t channels = 3;               // image_folder: 1 grey, 3 RGB
  std::string normalize = "auto";     // auto (computed over training samples) | none
  std::vector<double> mean, std;      // given normalisation (per channel, or one value)
  YAML::Node args;                    // custom: the program's own settings (data.args)
  int64_t synthetic_samples = 10000;  // synthetic: samples per epoch
  int64_t batch_size = 64;            // per rank
  bool shuffle = true;
  int64_t prefetch = 2;
  // text, tokens: the tail of the file held out for evaluation; npy, csv, image_folder: a seeded
  // random choice of samples.
  double val_fraction = 0.1;
};

// optimizer.type (kind), its settings, and gradient clipping.
struct OptimizerConfig : core::optim::OptimizerSpec {
  double grad_clip = 0;  // max global norm; 0 disables
};

struct ScheduleConfig {
  std::string type = "constant";  // constant | step | cosine
  int64_t warmup_steps = 0, step_size = 1000;
  double gamma = 0.1, min_lr = 0;
};

struct TrainConfig {
  int64_t epochs = 1, steps = 0;  // steps > 0 overrides epochs
  int64_t log_every = 50;
  int64_t grad_accum_steps = 1;  // batches per optimizer step (their mean gradient)
  double max_time_s = 0;         // stop with a checkpoint before this many seconds; 0: none
};

struct EarlyStopping {
  std::string metric;    // "" (off) | test_loss | test_acc
  int64_t patience = 3;  // evaluations without an improvement larger than min_delta
  double min_delta = 0;
};

struct EvalConfig {
  int64_t every_steps = 0;  // 0: after every epoch
  int64_t batch_size = 1000;
  int64_t max_batches = 0;  // 0: the whole evaluation set
  EarlyStopping early_stopping;
};

struct CheckpointConfig {
  std::string dir;          // default <logging.dir>/checkpoints
  int64_t every_steps = 0;  // 0: at the end of each epoch
  int64_t keep = 3;
  // Copy the state to host memory at the step and write it on a background thread (one write in
  // flight at most); training stalls only for the copy.
  bool async = false;
  // auto | never | PATH; empty (unset): auto for a restart of this same job, never otherwise.
  std::string resume;
};

// diagnostics: a rank whose own step time (without waiting for the others) is this factor of
// the other ranks' median over this many steps is reported while the job runs (0: off).
struct DiagnosticsConfig {
  double straggler_factor = 1.5;
  int64_t straggler_steps = 100;
};

struct LoggingConfig {
  std::string dir;  // default runs/<experiment>
  bool tensorboard = false, timeline = false;
};

// distributed.fsdp: how fsdp cuts the model into units.
struct FsdpConfig {
  // Module names (dotted as in parameter names; `*` matches one name part, e.g. blocks.*), each
  // gathered as one unit. Empty: every transformer block, else every top-level layer.
  std::vector<std::string> units;
  // Free a unit's gathered parameters after its forward and gather them again for backward.
  bool reshard_after_forward = true;
  int64_t prefetch = 1;  // units gathered ahead of the one computing
};

struct DistributedConfig {
  Strategy strategy = Strategy::kDdp;  // used when the job has more than one rank
  Backend backend = Backend::kAuto;
  double bucket_cap_mb = 25;
  double timeout_s = 300;
  bool find_unused_parameters = false;
  // What crosses the wire for each gradient bucket (ddp, zero1, zero2; powersgd: ddp only).
  collectives::CompressionOptions compression;
  FsdpConfig fsdp;
};

// distributed.strategy parameter_server: S servers hold the parameters and apply the optimiser.
struct ParameterServerConfig {
  int64_t servers = 1;
  ps::Mode mode = ps::Mode::kSync;
  int64_t staleness = 0;  // bounded: steps a worker may run ahead of the slowest
  ps::Compression compression = ps::Compression::kNone;  // on the wire
  // The servers' listening address; default: this node's, as cohort launch sees it.
  std::string bind;
  PsTransport transport = PsTransport::kAuto;
  double heartbeat_s = 1, worker_timeout_s = 30;
  int64_t checkpoint_every = 0;  // server updates; 0: at shutdown only
  std::string checkpoint_dir;    // default <checkpoint.dir>/ps
};

struct Config {
  std::string experiment;
  uint64_t seed = 0;
  DeviceSpec device;
  // fp32; bf16 or fp16: matmuls, linear layers and attention in that dtype on a GPU (autocast),
  // float32 master weights; fp16 adds dynamic loss scaling. fp64 (CPU only): parameters, data and
  // gradients in float64, for equivalence tests whose reference sums in another order.
  Precision precision = Precision::kFp32;
  int64_t threads = 0;  // 0: one per core available to this process
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  DiagnosticsConfig diagnostics;
  LoggingConfig logging;
  DistributedConfig distributed;
  ParameterServerConfig parameter_server;
  YAML::Node resolved;  // the full config with defaults filled in, for config.resolved.yaml
};

// Loads, overrides, validates. Throws cohort::ConfigError with one sentence naming key and
// location.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace cohort::trainer
