// Readable printing in PyTorch's style: nested brackets, aligned columns, summarised when large.
#include <cmath>
#include <cstdio>
#include <ostream>
#include <sstream>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/tensor/tensor.h"

namespace cohort::core {
namespace {

constexpr int64_t kSummarizeAbove = 1000;
constexpr int64_t kEdgeItems = 3;

enum class Style { kInt, kBool, kFloatIntegral, kFloat };

std::string format_value(double v, Style style) {
  char buf[64];
  if (style == Style::kBool) return v != 0 ? "True" : "False";
  const bool floating = style != Style::kInt;
  if (style == Style::kFloatIntegral && std::isfinite(v)) {
    std::snprintf(buf, sizeof buf, "%.0f.", v);
  } else if (!floating) {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  } else if (std::isnan(v)) {
    return "nan";
  } else if (std::isinf(v)) {
    return v > 0 ? "inf" : "-inf";
  } else if (v != 0 && (std::abs(v) >= 1e8 || std::abs(v) < 1e-4)) {
    std::snprintf(buf, sizeof buf, "%.4e", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.4f", v);
  }
  return buf;
}

void print_rec(std::ostream& os, const Tensor& t, const std::vector<double>& flat, const Shape& st,
               int64_t off, int64_t d, bool summarize, Style floating, size_t width, int indent) {
  if (t.dim() == 0) {
    os << format_value(flat[0], floating);
    return;
  }
  const int64_t n = t.size(d);
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (summarize && n > 2 * kEdgeItems && i == kEdgeItems) {
      os << (d == t.dim() - 1 ? "..., " : "...,\n" + std::string(indent + 1, ' '));
      i = n - kEdgeItems;
    }
    if (d == t.dim() - 1) {
      std::string s = format_value(flat[off + i * st[d]], floating);
      os << std::string(width > s.size() ? width - s.size() : 0, ' ') << s;
    } else {
      print_rec(os, t, flat, st, off + i * st[d], d + 1, summarize, floating, width, indent + 1);
    }
    if (i + 1 < n)
      os << (d == t.dim() - 1 ? ", "
                              : ",\n" + std::string(t.dim() - d - 1 > 1 ? 1 : 0, '\n') +
                                    std::string(indent + 1, ' '));
  }
  os << "]";
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  autograd::NoGradGuard g;
  Tensor c = to(Device::cpu()).contiguous().to(DType::kFloat64);
  std::vector<double> flat(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  bool summarize = numel() > kSummarizeAbove;
  Style floating = dtype() == DType::kBool ? Style::kBool
                   : is_floating(dtype())  ? Style::kFloat
                                           : Style::kInt;
  if (floating == Style::kFloat && !flat.empty()) {
    bool integral = true;
    for (double v : flat)
      integral = integral && (!std::isfinite(v) || (std::floor(v) == v && std::abs(v) < 1e8));
    if (integral) floating = Style::kFloatIntegral;
  }
  size_t width = 0;
  for (double v : flat) width = std::max(width, format_value(v, floating).size());
  std::ostringstream os;
  os << "tensor(";
  if (numel() == 0) {
    os << "[]";
  } else {
    print_rec(os, c, flat, c.strides(), 0, 0, summarize, floating, width, 7);
  }
  // Like PyTorch, the default float and integer types and bool go unnamed.
  bool implied = dtype() == DType::kFloat32 || dtype() == DType::kInt64 || dtype() == DType::kBool;
  if (numel() == 0 || !implied) os << ", dtype=" << dtype_name(dtype());
  if (numel() == 0) os << ", size=" << shape_str(sizes());
  if (!device().is_cpu()) os << ", device='" << device().str() << "'";
  if (grad_fn()) {
    os << ", grad_fn=<" << grad_fn()->name() << ">";
  } else if (requires_grad()) {
    os << ", requires_grad=True";
  }
  os << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace cohort::core
