// Config loading and validation against the schema below.
#include "trainer/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>

#include "core/util/error.h"
#include "trainer/config_schema.h"
#include "trainer/suggest.h"

namespace cohort::trainer {
namespace {

using config_detail::find_key;
using config_detail::Key;
using config_detail::Kind;
using config_detail::schema;

bool is_section(const std::string& path) {
  for (const Key& k : schema())
    if (k.path.rfind(path + ".", 0) == 0) return true;
  return false;
}

std::string suggestion(const std::string& path) {
  std::vector<std::string> paths;
  for (const Key& k : schema()) paths.push_back(k.path);
  return did_you_mean(path, paths);
}

class Validator {
 public:
  Validator(std::string file, std::set<std::string> overridden)
      : file_(std::move(file)), overridden_(std::move(overridden)) {}

  std::string where(const std::string& path, const YAML::Node& n) const {
    if (overridden_.count(path)) return "the command line override " + path + "=...";
    if (n.IsDefined() && n.Mark().line >= 0) return file_ + ":" + std::to_string(n.Mark().line + 1);
    return file_;
  }

  [[noreturn]] void fail(const std::string& path, const YAML::Node& n,
                         const std::string& msg) const {
    COHORT_THROW(ConfigError, where(path, n), ": ", msg);
  }

  void walk(const YAML::Node& map, const std::string& prefix) const {
    for (auto it = map.begin(); it != map.end(); ++it) {
      // A key written as a YAML sequence or mapping ("? [a]: b") has no name to look up.
      if (!it->first.IsScalar())
        fail(prefix, it->first,
             "a key must be a plain name, not a " +
                 std::string(it->first.IsMap()        ? "mapping"
                             : it->first.IsSequence() ? "list"
                                                      : "null") +
                 (prefix.empty() ? std::string(" (at the top level)")
                                 : " (under '" + prefix + "')"));
      std::string name = it->first.as<std::string>();
      std::string path = prefix.empty() ? name : prefix + "." + name;
      // A copy: it->second lives in a proxy that dies with this statement (ASan, fuzz_config).
      const YAML::Node v = it->second;
      if (const Key* k = find_key(path)) {
        check(*k, v);
      } else if (is_section(path)) {
        if (!v.IsMap()) fail(path, it->first, "'" + path + "' must be a mapping of keys");
        walk(v, path);
      } else {
        fail(path, it->first, "unknown key '" + path + "'" + suggestion(path));
      }
    }
  }

  void check(const Key& k, const YAML::Node& v) const {
    auto scalar_text = [&] {
      return v.IsScalar() ? "'" + v.Scalar() + "'" : std::string("a non-scalar value");
    };
    switch (k.kind) {
      case Kind::kString: {
        if (!v.IsScalar() || (v.Scalar().empty() && !k.def.empty()))
          fail(k.path, v, k.path + " must be a non-empty string");
        if (!k.choices.empty() &&
            std::find(k.choices.begin(), k.choices.end(), v.Scalar()) == k.choices.end()) {
          std::string opts;
          for (auto& c : k.choices) opts += (opts.empty() ? "" : ", ") + c;
          fail(k.path, v, k.path + " must be one of " + opts + ", got '" + v.Scalar() + "'");
        }
        return;
      }
      case Kind::kBool: {
        bool b;
        if (!v.IsScalar() || !YAML::convert<bool>::decode(v, b))
          fail(k.path, v, k.path + " must be true or false, got " + scalar_text());
        return;
      }
      case Kind::kInt: {
        int64_t x;
        if (!v.IsScalar() || !YAML::convert<int64_t>::decode(v, x))
          fail(k.path, v, k.path + " must be an integer, got " + scalar_text());
        range(k, v, static_cast<double>(x));
        return;
      }
      case Kind::kFloat: {
        double x;
        if (!v.IsScalar() || !YAML::convert<double>::decode(v, x) || std::isnan(x))
          fail(k.path, v, k.path + " must be a number, got " + scalar_text());
        range(k, v, x);
        return;
      }
      case Kind::kYaml:
        return;
      case Kind::kFloatList: {
        if (!v.IsSequence())
          fail(k.path, v, k.path + " must be a list of numbers, e.g. [0.5, 0.5, 0.5]");
        for (const auto& e : v) {
          double x;
          if (!e.IsScalar() || !YAML::convert<double>::decode(e, x) || std::isnan(x))
            fail(k.path, e, k.path + " must be a list of numbers");
          range(k, e, x);
        }
        return;
      }
      case Kind::kIntList: {
        if (!v.IsSequence())
          fail(k.path, v, k.path + " must be a list of integers, e.g. [512, 512]");
        for (const auto& e : v) {
          int64_t x;
          if (!e.IsScalar() || !YAML::convert<int64_t>::decode(e, x))
            fail(k.path, e,
                 k.path + " must be a list of integers, got an element " +
                     (e.IsScalar() ? "'" + e.Scalar() + "'" : std::string("that is not a scalar")));
          range(k, e, static_cast<double>(x));
        }
        return;
      }
    }
  }

  void range(const Key& k, const YAML::Node& v, double x) const {
    bool low = k.min_exclusive ? x <= k.min : x < k.min;
    if (low || x > k.max) {
      auto fmt = [](double d) {
        std::ostringstream os;
        os << d;
        return os.str();
      };
      std::string bound = std::isinf(k.max)
                              ? (k.min_exclusive ? "greater than " : "at least ") + fmt(k.min)
                              : "in [" + fmt(k.min) + ", " + fmt(k.max) + "]";
      fail(k.path, v, k.path + " must be " + bound + ", got " + v.Scalar());
    }
  }

 private:
  std::string file_;
  std::set<std::string> overridden_;
};

YAML::Node child(YAML::Node node, const std::string& path) {
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    node.reset(node[part]);
    if (dot == std::string::npos) return node;
    start = dot + 1;
  }
}

// Read-only lookup of a dotted path; an Undefined node when absent (never inserts).
YAML::Node lookup(const YAML::Node& root, const std::string& path) {
  size_t start = 0;
  YAML::Node cur = root;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const YAML::Node& c = cur;
    if (!c.IsMap() || !c[part]) return YAML::Node(YAML::NodeType::Undefined);
    cur.reset(c[part]);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// "3600", "90s", "45m", "2h", "1h30m", "1.5h" -> seconds; -1 when malformed.
double parse_duration(const std::string& text) {
  double total = 0;
  size_t i = 0;
  bool any = false;
  while (i < text.size()) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(text.substr(i), &used);
    } catch (const std::exception&) {
      return -1;
    }
    if (used == 0 || !std::isfinite(v) || v < 0) return -1;
    i += used;
    double unit = 1;
    if (i < text.size()) {
      const char u = text[i];
      if (u == 's' || u == 'm' || u == 'h' || u == 'd') {
        unit = u == 's' ? 1 : u == 'm' ? 60 : u == 'h' ? 3600 : 86400;
        ++i;
      } else {
        return -1;
      }
    } else if (any) {
      return -1;  // "1h30" is ambiguous
    }
    total += v * unit;
    any = true;
  }
  return any ? total : -1;
}

}  // namespace

namespace {

// The schema has checked the spelling against its choices already.
Strategy parse_strategy(const std::string& s) {
  if (s == "none") return Strategy::kNone;
  if (s == "zero1") return Strategy::kZero1;
  if (s == "zero2") return Strategy::kZero2;
  if (s == "fsdp") return Strategy::kFsdp;
  if (s == "parameter_server") return Strategy::kParameterServer;
  return Strategy::kDdp;
}

Backend parse_backend(const std::string& s) {
  if (s == "cpu") return Backend::kCpu;
  if (s == "nccl") return Backend::kNccl;
  if (s == "mpi") return Backend::kMpi;
  return Backend::kAuto;
}

Precision parse_precision(const std::string& s) {
  if (s == "bf16") return Precision::kBf16;
  if (s == "fp16") return Precision::kFp16;
  if (s == "fp64") return Precision::kFp64;
  return Precision::kFp32;
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (!std::filesystem::exists(path))
    COHORT_THROW(ConfigError, "config file ", path, " does not exist");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::ParserException& e) {
    COHORT_THROW(ConfigError, path, ":", e.mark.line + 1, ": malformed YAML: ", e.msg);
  } catch (const YAML::BadFile&) {
    COHORT_THROW(ConfigError, "config file ", path, " cannot be read");
  }
  if (root.IsNull() || !root.IsDefined())
    COHORT_THROW(ConfigError, "config file ", path, " is empty");
  if (!root.IsMap())
    COHORT_THROW(ConfigError, path, ":1: the top level of a config must be a mapping of keys");

  std::set<std::string> overridden;
  for (const std::string& o : overrides) {
    size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0)
      COHORT_THROW(ConfigError, "override '", o, "' must look like key.path=value");
    std::string key = o.substr(0, eq), value = o.substr(eq + 1);
    if (!find_key(key))
      COHORT_THROW(ConfigError, "unknown key '", key, "' in the command line override '", o, "'",
                   suggestion(key));
    YAML::Node v;
    try {
      v = YAML::Load(value);
    } catch (const YAML::Exception&) {
      v = YAML::Node(value);
    }
    if (v.IsNull()) v = YAML::Node(value);
    // Create intermediate maps as needed.
    YAML::Node cur = root;
    size_t start = 0;
    while (true) {
      size_t dot = key.find('.', start);
      std::string part =
          key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (dot == std::string::npos) {
        cur[part] = v;
        break;
      }
      if (!cur[part] || !cur[part].IsMap()) cur[part] = YAML::Node(YAML::NodeType::Map);
      cur.reset(cur[part]);
      start = dot + 1;
    }
    overridden.insert(key);
  }

  // data.image_size: one number means a square.
  if (const YAML::Node side = lookup(root, "data.image_size");
      side.IsDefined() && side.IsScalar()) {
    YAML::Node list(YAML::NodeType::Sequence);
    list.push_back(YAML::Clone(side));
    root["data"]["image_size"] = list;  // lookup found data to be a mapping
  }
  Validator val(path, overridden);
  try {
    val.walk(root, "");
  } catch (const YAML::Exception& e) {
    // Whatever yaml-cpp still refuses is one sentence naming the file and line, not a crash.
    COHORT_THROW(ConfigError, path, ":", e.mark.line + 1, ": ", e.msg);
  }

  // Fill defaults and read typed values.
  YAML::Node resolved = YAML::Clone(root);
  for (const Key& k : schema()) {
    if (lookup(root, k.path).IsDefined()) continue;
    if (k.required) COHORT_THROW(ConfigError, path, ": missing required key ", k.path);
    if (k.kind == Kind::kYaml && k.def.empty()) continue;
    child(resolved, k.path) = k.def.empty() ? YAML::Node("") : YAML::Load(k.def);
  }
  auto str = [&](const std::string& p) { return lookup(resolved, p).as<std::string>(); };
  auto i64 = [&](const std::string& p) { return lookup(resolved, p).as<int64_t>(); };
  auto f64 = [&](const std::string& p) { return lookup(resolved, p).as<double>(); };
  auto bl = [&](const std::string& p) { return lookup(resolved, p).as<bool>(); };

  Config c;
  c.experiment = str("experiment");
  c.seed = static_cast<uint64_t>(i64("seed"));
  try {
    c.device = DeviceSpec::parse(str("device"));
  } catch (const ConfigError& e) {
    val.fail("device", lookup(root, "device"), e.what());
  }
  c.precision = parse_precision(str("precision"));
  // Read first: later checks depend on it.
  c.distributed.strategy = parse_strategy(str("distributed.strategy"));
  c.threads = i64("threads");
  c.model.type = str("model.type");
  c.model.hidden = lookup(resolved, "model.hidden").as<std::vector<int64_t>>();
  {
    const bool config_model = c.model.type == "sequential" || c.model.type == "graph";
    const YAML::Node layers = lookup(root, "model.layers");
    auto only_for = [&](const std::string& key, const std::string& types) {
      const YAML::Node n = lookup(root, key);
      if (n.IsDefined())
        val.fail(key, n, key + " is for model.type " + types + ", not " + c.model.type);
    };
    // What yaml-cpp still refuses inside a layer list is one sentence, not a crash (fuzz_config).
    auto parse = [&](auto&& f) {
      try {
        c.model.spec = std::make_shared<ModelSpec>(f());
      } catch (const YAML::Exception& e) {
        COHORT_THROW(ConfigError, path, ":", e.mark.line + 1, ": model: ", e.msg);
      }
    };
    if (c.model.type == "sequential") {
      parse([&] { return parse_sequential(layers, path); });
    } else if (c.model.type == "graph") {
      only_for("model.layers", "gpt (a number of blocks) or sequential (a list of layers)");
      parse([&] {
        return parse_graph(lookup(root, "model.nodes"), lookup(root, "model.output"), path);
      });
    } else {
      // A number of transformer blocks (gpt; ignored by mlp and cnn).
      if (layers.IsDefined()) val.check(Key{"model.layers", Kind::kInt, "2", 1, 1000}, layers);
      c.model.layers = i64("model.layers");
    }
    if (c.model.type != "custom") only_for("model.args", "custom");
    c.model.args = YAML::Clone(lookup(root, "model.args"));
    if (!config_model) {
      only_for("model.nodes", "graph");
      only_for("model.output", "graph");
    } else {
      for (const char* key : {"model.hidden", "model.heads", "model.dim", "model.dropout"})
        only_for(key, std::string(key) == "model.hidden" ? "mlp" : "gpt");
    }
  }
  c.model.heads = i64("model.heads");
  c.model.dim = i64("model.dim");
  c.model.context = i64("model.context");
  c.model.dropout = f64("model.dropout");
  c.model.init_from = str("model.init_from");
  if (!c.model.init_from.empty() && !std::filesystem::is_regular_file(c.model.init_from))
    val.fail("model.init_from", lookup(root, "model.init_from"),
             "model.init_from " + c.model.init_from + " is not a readable file");
  c.model.vocab = i64("model.vocab");
  if (c.model.type == "gpt" && c.model.dim % c.model.heads != 0)
    val.fail("model.dim", lookup(root, "model.dim"),
             "model.dim (" + std::to_string(c.model.dim) + ") must be divisible by model.heads (" +
                 std::to_string(c.model.heads) + ")");
  c.data.dataset = str("data.dataset");
  c.data.path = str("data.path");
  c.data.batch_size = i64("data.batch_size");
  c.data.shuffle = bl("data.shuffle");
  c.data.prefetch = i64("data.prefetch");
  c.data.val_fraction = f64("data.val_fraction");
  c.data.val_path = str("data.val_path");
  c.data.synthetic_samples = i64("data.synthetic_samples");
  if (const YAML::Node a = lookup(root, "data.args"); a.IsDefined()) {
    if (c.data.dataset != "custom")
      val.fail("data.args", a, "data.args is for data.dataset custom, not " + c.data.dataset);
    c.data.args = YAML::Clone(a);
  }
  c.data.inputs = str("data.inputs");
  c.data.targets = str("data.targets");
  c.data.target_column = str("data.target_column");
  c.data.image_size = lookup(resolved, "data.image_size").as<std::vector<int64_t>>();
  c.data.channels = i64("data.channels");
  c.data.normalize = str("data.normalize");
  c.data.mean = lookup(resolved, "data.mean").as<std::vector<double>>();
  c.data.std = lookup(resolved, "data.std").as<std::vector<double>>();
  const bool files =
      c.data.dataset == "npy" || c.data.dataset == "csv" || c.data.dataset == "image_folder";
  const bool language = !files && c.data.dataset != "fashion_mnist" && c.data.dataset != "custom";
  if (c.model.type == "gpt" && !language)
    val.fail("data.dataset", lookup(root, "data.dataset"),
             "model.type gpt needs data.dataset text, tokens or synthetic");
  if ((c.model.type == "mlp" || c.model.type == "cnn") && language)
    val.fail("data.dataset", lookup(root, "data.dataset"),
             "data.dataset " + c.data.dataset + " needs model.type gpt");
  if (c.data.dataset == "text" && c.model.vocab < 256)
    val.fail("model.vocab", lookup(root, "model.vocab"),
             "model.vocab must be at least 256 for data.dataset text (one token per byte), got " +
                 std::to_string(c.model.vocab));
  {
    namespace fs = std::filesystem;
    auto need = [&](const std::string& key, const std::string& value, bool dir,
                    const std::string& what) {
      const YAML::Node at = lookup(root, key);
      if (value.empty())
        val.fail(key, at, "data.dataset " + c.data.dataset + " needs " + key + " (" + what + ")");
      if (dir ? !fs::is_directory(value) : !fs::is_regular_file(value))
        val.fail(key, at,
                 key + " " + value + (dir ? " is not a directory" : " is not a readable file"));
    };
    for (const char* key : {"data.inputs", "data.targets"})
      if (c.data.dataset != "npy" && lookup(root, key).IsDefined())
        val.fail(key, lookup(root, key), std::string(key) + " is for data.dataset npy");
    if (c.data.dataset != "csv" && lookup(root, "data.target_column").IsDefined())
      val.fail("data.target_column", lookup(root, "data.target_column"),
               "data.target_column is for data.dataset csv");
    if (c.data.dataset == "npy") {
      need("data.inputs", c.data.inputs, false, "a .npy array of inputs [N, ...]");
      need("data.targets", c.data.targets, false, "a .npy array of integer labels [N]");
    }
    if (c.data.dataset == "image_folder" && c.data.image_size.empty())
      val.fail("data.image_size", lookup(root, "data.image_size"),
               "data.dataset image_folder needs data.image_size, [height, width] (or one number "
               "for a square)");
    if (c.data.image_size.size() > 2)
      val.fail("data.image_size", lookup(root, "data.image_size"),
               "data.image_size is [height, width] or one number");
    if (c.data.channels == 2)
      val.fail("data.channels", lookup(root, "data.channels"),
               "data.channels must be 1 (grey) or 3 (RGB)");
    if (c.data.mean.size() != c.data.std.size())
      val.fail("data.std", lookup(root, "data.std"),
               "data.mean and data.std must have as many values as each other");
    if (!c.data.mean.empty() && c.data.normalize == "none")
      val.fail("data.mean", lookup(root, "data.mean"),
               "data.mean and data.std are given but data.normalize is none");
    const bool file =
        c.data.dataset == "text" || c.data.dataset == "tokens" || c.data.dataset == "csv";
    const bool ok = c.data.dataset == "synthetic" || c.data.dataset == "npy" ||
                    c.data.dataset == "custom" ||
                    (file ? fs::is_regular_file(c.data.path) : fs::is_directory(c.data.path));
    if (!ok)
      val.fail(
          "data.path", lookup(root, "data.path"),
          "data.path " + c.data.path + (file ? " is not a readable file" : " is not a directory") +
              (c.data.dataset == "fashion_mnist"
                   ? " (install Debian's dataset-fashion-mnist or point data.path at the IDX files)"
                   : ""));
    if (!c.data.val_path.empty() && (c.data.dataset == "fashion_mnist" ||
                                     c.data.dataset == "text" || c.data.dataset == "synthetic"))
      val.fail("data.val_path", lookup(root, "data.val_path"),
               "data.val_path is for data.dataset tokens, npy, csv and image_folder");
    // npy and image_folder: a directory (npy: holding arrays named as data.inputs and
    // data.targets); tokens and csv: a file.
    const bool val_dir = c.data.dataset == "npy" || c.data.dataset == "image_folder";
    if (!c.data.val_path.empty() &&
        (val_dir ? !fs::is_directory(c.data.val_path) : !fs::is_regular_file(c.data.val_path)))
      val.fail("data.val_path", lookup(root, "data.val_path"),
               "data.val_path " + c.data.val_path +
                   (val_dir ? " is not a directory" : " is not a readable file"));
  }
  c.optimizer.kind = core::optim::parse_optimizer_kind(str("optimizer.type"));
  c.optimizer.lr = f64("optimizer.lr");
  c.optimizer.momentum = f64("optimizer.momentum");
  c.optimizer.nesterov = bl("optimizer.nesterov");
  c.optimizer.weight_decay = f64("optimizer.weight_decay");
  c.optimizer.beta1 = f64("optimizer.beta1");
  c.optimizer.beta2 = f64("optimizer.beta2");
  c.optimizer.eps = f64("optimizer.eps");
  c.optimizer.grad_clip = f64("optimizer.grad_clip");
  if (c.optimizer.nesterov && c.optimizer.momentum <= 0)
    val.fail("optimizer.nesterov", lookup(root, "optimizer.nesterov"),
             "optimizer.nesterov needs optimizer.momentum > 0");
  c.schedule.type = str("schedule.type");
  c.schedule.warmup_steps = i64("schedule.warmup_steps");
  c.schedule.step_size = i64("schedule.step_size");
  c.schedule.gamma = f64("schedule.gamma");
  c.schedule.min_lr = f64("schedule.min_lr");
  c.train.epochs = i64("train.epochs");
  c.train.steps = i64("train.steps");
  c.train.log_every = i64("train.log_every");
  c.train.grad_accum_steps = i64("train.grad_accum_steps");
  if (c.train.grad_accum_steps > 1 && c.distributed.strategy == Strategy::kParameterServer)
    val.fail("train.grad_accum_steps", lookup(root, "train.grad_accum_steps"),
             "train.grad_accum_steps is not available with parameter servers, which apply each "
             "push as it arrives");
  if (const std::string t = str("train.max_time"); !t.empty()) {
    c.train.max_time_s = parse_duration(t);
    if (c.train.max_time_s <= 0)
      val.fail(
          "train.max_time", lookup(root, "train.max_time"),
          "train.max_time must be a duration such as 3600, 90s, 45m, 2h or 1h30m, got '" + t + "'");
  }
  c.eval.every_steps = i64("eval.every_steps");
  c.eval.batch_size = i64("eval.batch_size");
  c.eval.max_batches = i64("eval.max_batches");
  c.eval.early_stopping.metric = str("eval.early_stopping.metric");
  c.eval.early_stopping.patience = i64("eval.early_stopping.patience");
  c.eval.early_stopping.min_delta = f64("eval.early_stopping.min_delta");
  if (!c.eval.early_stopping.metric.empty() && c.distributed.strategy == Strategy::kParameterServer)
    val.fail("eval.early_stopping.metric", lookup(root, "eval.early_stopping.metric"),
             "eval.early_stopping is not available with parameter servers (only the chief "
             "evaluates, and the workers would not stop together)");
  c.logging.dir = str("logging.dir");
  if (c.logging.dir.empty()) c.logging.dir = "runs/" + c.experiment;
  c.logging.tensorboard = bl("logging.tensorboard");
  c.logging.timeline = bl("logging.timeline");
  c.checkpoint.dir = str("checkpoint.dir");
  if (c.checkpoint.dir.empty()) c.checkpoint.dir = c.logging.dir + "/checkpoints";
  c.checkpoint.every_steps = i64("checkpoint.every_steps");
  c.checkpoint.keep = i64("checkpoint.keep");
  c.checkpoint.async = bl("checkpoint.async");
  c.diagnostics.straggler_factor = f64("diagnostics.straggler_factor");
  if (c.diagnostics.straggler_factor > 0 && c.diagnostics.straggler_factor <= 1)
    val.fail("diagnostics.straggler_factor", lookup(root, "diagnostics.straggler_factor"),
             "diagnostics.straggler_factor must be 0 (off) or above 1 (a rank this many times "
             "slower than the others is reported)");
  c.diagnostics.straggler_steps = i64("diagnostics.straggler_steps");
  c.checkpoint.resume = str("checkpoint.resume");
  if (!c.checkpoint.resume.empty() && c.checkpoint.resume != "auto" &&
      c.checkpoint.resume != "never" && !std::filesystem::exists(c.checkpoint.resume))
    val.fail("checkpoint.resume", lookup(root, "checkpoint.resume"),
             "checkpoint.resume must be auto, never or an existing checkpoint directory, got '" +
                 c.checkpoint.resume + "'");
  c.distributed.backend = parse_backend(str("distributed.backend"));
  c.distributed.bucket_cap_mb = f64("distributed.bucket_cap_mb");
  c.distributed.timeout_s = f64("distributed.timeout_s");
  c.distributed.find_unused_parameters = bl("distributed.find_unused_parameters");
  {
    auto& cmp = c.distributed.compression;
    cmp.kind = collectives::parse_compression(str("distributed.compression"));
    cmp.powersgd.rank = i64("distributed.powersgd.rank");
    cmp.powersgd.start_step = i64("distributed.powersgd.start_step");
    cmp.powersgd.warm_start = bl("distributed.powersgd.warm_start");
    cmp.powersgd.error_feedback = bl("distributed.powersgd.error_feedback");
    cmp.powersgd.min_compression_rate = f64("distributed.powersgd.min_compression_rate");
    cmp.powersgd.seed = c.seed;
    const YAML::Node given = lookup(root, "distributed.compression");
    const Strategy st = c.distributed.strategy;
    if (cmp.kind != collectives::Compression::kNone && st != Strategy::kDdp &&
        st != Strategy::kZero1 && st != Strategy::kZero2)
      val.fail("distributed.compression", given,
               std::string("distributed.compression compresses gradient buckets of "
                           "distributed.strategy ddp, zero1 and zero2, not ") +
                   strategy_name(st));
    if (cmp.kind == collectives::Compression::kPowerSgd && st != Strategy::kDdp)
      val.fail("distributed.compression", given,
               std::string("distributed.compression powersgd all-reduces low-rank factors of "
                           "whole gradients: it needs distributed.strategy ddp, not ") +
                   strategy_name(st) + " (bf16 and fp16 work with zero1 and zero2)");
    if (cmp.kind == collectives::Compression::kPowerSgd && c.precision == Precision::kFp16)
      val.fail("distributed.compression", given,
               "distributed.compression powersgd cannot follow precision fp16's loss scaling: a "
               "step that overflows would carry inf into every later step's error feedback; use "
               "precision bf16");
    for (const char* key :
         {"distributed.powersgd.rank", "distributed.powersgd.start_step",
          "distributed.powersgd.warm_start", "distributed.powersgd.error_feedback",
          "distributed.powersgd.min_compression_rate"})
      if (const YAML::Node k = lookup(root, key);
          k.IsDefined() && !k.IsNull() && cmp.kind != collectives::Compression::kPowerSgd)
        val.fail(key, k,
                 std::string(key) + " is for distributed.compression powersgd, not " +
                     collectives::compression_name(cmp.kind));
  }
  if (const YAML::Node u = lookup(root, "distributed.fsdp.unit"); u.IsDefined() && !u.IsNull()) {
    auto bad = [&] {
      val.fail("distributed.fsdp.unit", u,
               "distributed.fsdp.unit must be a module name or a list of them (e.g. blocks.*)");
    };
    if (u.IsScalar()) {
      c.distributed.fsdp.units.push_back(u.as<std::string>());
    } else if (u.IsSequence()) {
      for (const YAML::Node& n : u) {
        if (!n.IsScalar()) bad();
        c.distributed.fsdp.units.push_back(n.as<std::string>());
      }
    } else {
      bad();
    }
    for (const std::string& name : c.distributed.fsdp.units)
      if (name.empty()) bad();
    if (c.distributed.strategy != Strategy::kFsdp)
      val.fail("distributed.fsdp.unit", u,
               std::string("distributed.fsdp.unit is for distributed.strategy fsdp, not ") +
                   strategy_name(c.distributed.strategy));
  }
  c.distributed.fsdp.reshard_after_forward = bl("distributed.fsdp.reshard_after_forward");
  c.distributed.fsdp.prefetch = i64("distributed.fsdp.prefetch");
  c.parameter_server.servers = i64("parameter_server.servers");
  c.parameter_server.mode = ps::parse_mode(str("parameter_server.mode"));
  c.parameter_server.staleness = i64("parameter_server.staleness");
  c.parameter_server.compression = ps::parse_compression(str("parameter_server.compression"));
  c.parameter_server.bind = str("parameter_server.bind");
  c.parameter_server.transport =
      str("parameter_server.transport") == "grpc" ? PsTransport::kGrpc : PsTransport::kAuto;
  c.parameter_server.heartbeat_s = f64("parameter_server.heartbeat_s");
  c.parameter_server.worker_timeout_s = f64("parameter_server.worker_timeout_s");
  c.parameter_server.checkpoint_every = i64("parameter_server.checkpoint_every");
  c.parameter_server.checkpoint_dir = str("parameter_server.checkpoint_dir");
  if (c.parameter_server.checkpoint_dir.empty())
    c.parameter_server.checkpoint_dir = c.checkpoint.dir + "/ps";
  if (c.parameter_server.mode == ps::Mode::kBounded && c.parameter_server.staleness == 0)
    val.fail("parameter_server.staleness", lookup(root, "parameter_server.staleness"),
             "parameter_server.mode bounded needs parameter_server.staleness >= 1 (0 is sync)");
  if (c.parameter_server.heartbeat_s * 3 > c.parameter_server.worker_timeout_s)
    val.fail("parameter_server.worker_timeout_s", lookup(root, "parameter_server.worker_timeout_s"),
             "parameter_server.worker_timeout_s must be at least 3 heartbeats "
             "(parameter_server.heartbeat_s)");
  resolved["logging"]["dir"] = c.logging.dir;
  resolved["checkpoint"]["dir"] = c.checkpoint.dir;
  resolved["parameter_server"]["checkpoint_dir"] = c.parameter_server.checkpoint_dir;
  c.resolved = resolved;
  return c;
}

}  // namespace cohort::trainer
