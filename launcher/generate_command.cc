// Autoregressive sampling: the model sees at most model.context tokens (the newest), the last
// position's logits are divided by the temperature, cut to the top k, and sampled with a seeded
// generator, so that the same command prints the same text.
#include "launcher/generate_command.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "core/autograd/grad_mode.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "trainer/trainer.h"

namespace cohort::launcher {
namespace {

struct GenerateOptions {
  std::string checkpoint, prompt, prompt_tokens;
  bool has_prompt = false;
  int64_t max_new_tokens = 200, top_k = 40;
  double temperature = 0.8;
  uint64_t seed = 0;
};

int64_t to_int(const std::string& key, const std::string& v, int64_t lo, int64_t hi) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || x < lo || x > hi)
    COHORT_THROW(ConfigError, "cohort generate: ", key, " must be an integer in [", lo, ", ", hi,
                 "], got '", v, "'");
  return x;
}

}  // namespace

int generate_command(const std::string& config, const std::vector<std::string>& args) {
  GenerateOptions o;
  std::vector<std::string> overrides;
  for (const std::string& a : args) {
    const size_t eq = a.find('=');
    const std::string key = a.substr(0, eq),
                      value = eq == std::string::npos ? "" : a.substr(eq + 1);
    if (key == "checkpoint") {
      o.checkpoint = value;
    } else if (key == "prompt") {
      o.prompt = value;
      o.has_prompt = true;
    } else if (key == "prompt_tokens") {
      o.prompt_tokens = value;
    } else if (key == "max_new_tokens") {
      o.max_new_tokens = to_int(key, value, 1, 1 << 20);
    } else if (key == "top_k") {
      o.top_k = to_int(key, value, 0, 1 << 24);
    } else if (key == "seed") {
      o.seed = static_cast<uint64_t>(to_int(key, value, 0, int64_t{1} << 62));
    } else if (key == "temperature") {
      char* end = nullptr;
      o.temperature = std::strtod(value.c_str(), &end);
      if (value.empty() || *end || !(o.temperature > 0) || !std::isfinite(o.temperature))
        COHORT_THROW(ConfigError, "cohort generate: temperature must be a positive number, got '",
                     value, "'");
    } else {
      overrides.push_back(a);  // a config key
    }
  }
  trainer::Config c = trainer::load_config(config, overrides);
  if (c.model.type == "mlp" || c.model.type == "cnn" || c.model.type == "custom")
    COHORT_THROW(ConfigError,
                 "cohort generate needs a model over tokens (model.type gpt, or a "
                 "sequential or graph model that starts with an embedding), not model.type ",
                 c.model.type);
  const bool bytes = c.model.vocab == 256 && c.data.dataset != "tokens";
  if (o.has_prompt && !o.prompt_tokens.empty())
    COHORT_THROW(ConfigError, "cohort generate: give prompt or prompt_tokens, not both");
  if (o.has_prompt && !bytes)
    COHORT_THROW(ConfigError, "cohort generate: model.vocab is ", c.model.vocab,
                 ", not a byte-level model: give prompt_tokens=ID,ID,... (Cohort has no "
                 "tokenizer for this vocabulary)");
  if (o.checkpoint.empty()) {
    auto latest = core::io::latest_checkpoint(c.checkpoint.dir);
    if (!latest)
      COHORT_THROW(ConfigError, "cohort generate: no checkpoint= given and none in ",
                   c.checkpoint.dir, " (checkpoint.dir of ", config, ")");
    o.checkpoint = *latest;
  }
  // The model: token input [1, context].
  core::Generator init(c.seed);
  const core::Tensor sample =
      core::zeros({1, c.model.context}, core::TensorOptions(core::DType::kInt64));
  auto model = trainer::build_model(c, &init, sample);
  core::io::TensorMap weights = std::filesystem::is_directory(o.checkpoint)
                                    ? core::io::load_checkpoint(o.checkpoint).model
                                    : core::io::load_safetensors(o.checkpoint);
  try {
    model->load_state_dict(weights);
  } catch (const IoError&) {
    throw;
  } catch (const Error& e) {
    COHORT_THROW(ConfigError, "checkpoint ", o.checkpoint,
                 " does not fit this config's model: ", e.what());
  }
  const core::Device device = trainer::resolve_device(c.device, 0, 1);
  model->to(device);
  model->eval();

  std::vector<int64_t> tokens;
  if (bytes) {
    for (unsigned char ch : o.prompt) tokens.push_back(ch);
  } else {
    size_t start = 0;
    while (start < o.prompt_tokens.size()) {
      const size_t comma = std::min(o.prompt_tokens.find(',', start), o.prompt_tokens.size());
      tokens.push_back(to_int("prompt_tokens", o.prompt_tokens.substr(start, comma - start), 0,
                              c.model.vocab - 1));
      start = comma + 1;
    }
  }
  if (tokens.empty()) tokens.push_back(bytes ? '\n' : 0);  // something to continue from
  for (int64_t t : tokens)
    if (t < 0 || t >= c.model.vocab)
      COHORT_THROW(ConfigError, "cohort generate: token ", t, " is outside model.vocab ",
                   c.model.vocab);

  core::Generator gen(o.seed);
  core::autograd::NoGradGuard guard;
  if (bytes) std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
  for (int64_t n = 0; n < o.max_new_tokens; ++n) {
    const auto len =
        static_cast<int64_t>(std::min<size_t>(tokens.size(), static_cast<size_t>(c.model.context)));
    std::vector<int64_t> window(tokens.end() - len, tokens.end());
    core::Tensor x = core::from_vector(window, {1, len}).to(device);
    core::Tensor logits = model->forward(x);
    if (logits.dim() != 3 || logits.size(2) != c.model.vocab)
      COHORT_THROW(ConfigError, "cohort generate: the model's output is ",
                   core::shape_str(logits.sizes()), ", not [1, T, ", c.model.vocab,
                   "] logits over the vocabulary");
    core::Tensor last =
        logits.select(1, len - 1).reshape({-1}).to(core::Device::cpu()).to(core::DType::kFloat64);
    std::vector<double> p(last.data_ptr<double>(), last.data_ptr<double>() + last.numel());
    for (double& v : p) v /= o.temperature;
    if (o.top_k > 0 && o.top_k < static_cast<int64_t>(p.size())) {
      std::vector<double> sorted = p;
      std::nth_element(sorted.begin(), sorted.begin() + (o.top_k - 1), sorted.end(),
                       std::greater<>());
      const double cut = sorted[static_cast<size_t>(o.top_k - 1)];
      for (double& v : p)
        if (v < cut) v = -INFINITY;
    }
    const double top = *std::max_element(p.begin(), p.end());
    double total = 0;
    for (double& v : p) total += (v = std::exp(v - top));
    const double u =
        core::rand({1}, core::TensorOptions(core::DType::kFloat64), &gen).item<double>() * total;
    int64_t next = static_cast<int64_t>(p.size()) - 1;
    double acc = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      acc += p[i];
      if (u < acc) {
        next = static_cast<int64_t>(i);
        break;
      }
    }
    tokens.push_back(next);
    if (bytes) {
      std::fputc(static_cast<int>(next), stdout);
    } else {
      std::printf(n == 0 ? "%lld" : ",%lld", static_cast<long long>(next));
    }
    std::fflush(stdout);
  }
  std::printf("\n");
  return 0;
}

}  // namespace cohort::launcher
