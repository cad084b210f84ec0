// Builds the modules of a config model (model_spec.h) for the data's shape: each layer's input
// size (`in_features`, `in_channels`, `num_features`, `d_model`) is read off its input, which is
// found by running one sample through the layers built so far. Parameters are named as PyTorch
// names them: "0.weight" in a sequential model, "<node>.weight" in a graph.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "core/tensor/generator.h"
#include "trainer/model_spec.h"

namespace cohort::trainer {

struct LayerSummary {
  std::string name;  // "3", "block1.0", "head"
  std::string kind;
  core::Shape output;  // for one sample, batch dimension first
  int64_t params = 0;
};

struct BuiltModel {
  std::shared_ptr<core::nn::Module> module;
  std::vector<LayerSummary> layers;
};

// `sample` is one input of the data ([1, ...], float or integer). Throws ConfigError naming the
// layer when a layer does not fit its input ("model.layers[5] (conv2d): needs [N, C, H, W] input,
// got [1, 784]").
BuiltModel build_config_model(const ModelSpec& spec, const core::Tensor& sample,
                              core::Generator* gen);

// The table `cohort train --print-model` prints: one row per layer, then the total.
std::string format_model_summary(const std::vector<LayerSummary>& layers, int64_t total_params);

}  // namespace cohort::trainer
