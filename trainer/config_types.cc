// The typed settings' names and the device's spelling (config.h).
#include <string>

#include "core/util/error.h"
#include "trainer/config.h"

namespace cohort::trainer {

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::kNone:
      return "none";
    case Strategy::kDdp:
      return "ddp";
    case Strategy::kZero1:
      return "zero1";
    case Strategy::kZero2:
      return "zero2";
    case Strategy::kFsdp:
      return "fsdp";
    case Strategy::kParameterServer:
      return "parameter_server";
  }
  return "?";
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kAuto:
      return "auto";
    case Backend::kCpu:
      return "cpu";
    case Backend::kNccl:
      return "nccl";
    case Backend::kMpi:
      return "mpi";
  }
  return "?";
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return "fp32";
    case Precision::kBf16:
      return "bf16";
    case Precision::kFp16:
      return "fp16";
    case Precision::kFp64:
      return "fp64";
  }
  return "?";
}

DeviceSpec DeviceSpec::parse(const std::string& text) {
  DeviceSpec d;
  if (text == "auto") return d;
  if (text == "cpu") {
    d.kind = Kind::kCpu;
    return d;
  }
  if (text == "cuda") {
    d.kind = Kind::kCuda;
    return d;
  }
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 9 &&
      text.find_first_not_of("0123456789", 5) == std::string::npos) {
    d.kind = Kind::kCuda;
    d.index = std::stoi(text.substr(5));
    return d;
  }
  COHORT_THROW(ConfigError, "device must be auto, cpu, cuda or cuda:N, got '", text, "'");
}

std::string DeviceSpec::str() const {
  switch (kind) {
    case Kind::kAuto:
      return "auto";
    case Kind::kCpu:
      return "cpu";
    case Kind::kCuda:
      return index < 0 ? "cuda" : "cuda:" + std::to_string(index);
  }
  return "?";
}

}  // namespace cohort::trainer
