// Where a tensor's storage lives. Kernels are chosen by the tensor's device (core/ops/backend.h).
#pragma once

#include <cstdint>
#include <string>

namespace cohort::core {

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;

  static Device cpu() { return {DeviceType::kCPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::kCUDA, index}; }
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  bool operator==(const Device&) const = default;
  std::string str() const {
    return type == DeviceType::kCPU ? "cpu" : "cuda:" + std::to_string(index);
  }
  // Parses "cpu", "cuda" or "cuda:N"; throws InvalidArgument otherwise.
  static Device parse(const std::string& s);
};

}  // namespace cohort::core
