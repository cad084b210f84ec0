// Finite-difference gradient checking in float64 (the oracle for every op's backward).
#pragma once

#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::test {

using core::Tensor;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Checks d(sum(f(x) * w))/dx against central differences for every input that requires grad.
inline ::testing::AssertionResult gradcheck(const Fn& f, std::vector<Tensor> inputs,
                                            double eps = 1e-6, double tol = 1e-5) {
  core::Generator gen(1234);
  Tensor out = f(inputs);
  Tensor w = core::randn(out.sizes(), core::TensorOptions(core::DType::kFloat64), &gen);
  core::sum(core::mul(out, w)).backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& x = inputs[i];
    if (!x.requires_grad()) continue;
    Tensor analytic = x.grad();
    if (!analytic.defined()) analytic = core::zeros_like(x);
    analytic = analytic.contiguous();
    core::autograd::NoGradGuard ng;
    Tensor xc = x.detach();
    double* p = xc.data_ptr<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double orig = p[j];
      p[j] = orig + eps;
      double fp = core::sum(core::mul(f(inputs), w)).item<double>();
      p[j] = orig - eps;
      double fm = core::sum(core::mul(f(inputs), w)).item<double>();
      p[j] = orig;
      double numeric = (fp - fm) / (2 * eps);
      double a = analytic.data_ptr<double>()[j];
      if (std::abs(a - numeric) > tol * (1 + std::abs(numeric))) {
        return ::testing::AssertionFailure() << "input " << i << " element " << j << ": analytic "
                                             << a << " vs numeric " << numeric;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

inline Tensor rand64(const core::Shape& s, uint64_t seed, bool requires_grad = true, double lo = -1,
                     double hi = 1) {
  core::Generator g(seed);
  Tensor t = core::add(
      core::mul(core::rand(s, core::TensorOptions(core::DType::kFloat64), &g), hi - lo), lo);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

}  // namespace cohort::test
