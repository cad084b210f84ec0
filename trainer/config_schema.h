// Internal to trainer/config.cc: every config key with its kind, default and range.
#pragma once

#include <limits>
#include <string>
#include <vector>

namespace cohort::trainer::config_detail {

// kYaml: any YAML, checked by the code that reads the key (model.layers is a number for gpt and
// a list of layers for sequential).
enum class Kind { kString, kInt, kFloat, kBool, kIntList, kFloatList, kYaml };

struct Key {
  std::string path;
  Kind kind;
  std::string def;  // YAML text of the default; empty string for "" defaults of strings
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  std::vector<std::string> choices = {};
  bool min_exclusive = false;
  bool required = false;
};

const std::vector<Key>& schema();
const Key* find_key(const std::string& path);

}  // namespace cohort::trainer::config_detail
