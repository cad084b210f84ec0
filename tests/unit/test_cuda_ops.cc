// Every core op on CUDA against the CPU backend, forward and backward: the same inputs, the same
// upstream gradient, compared element by element. float64 cases check the formulas tightly;
// float32 cases run with TF32 off (and one with it on, at TF32's tolerance). Needs a GPU; skips,
// saying why, where there is none (CI). scripts/gpu-test.sh runs it on the GPU machine.
#include <gtest/gtest.h>

#include <functional>

#include "cohort/config.h"
#include "core/autograd/grad_mode.h"
#include "core/nn/models.h"
#include "core/ops/ops.h"
#include "core/optim/optimizer.h"
#include "core/tensor/cuda/cuda_device.h"

namespace cohort::test {
namespace {

using core::DType;
using core::Tensor;
using V = std::vector<Tensor>;
using Fn = std::function<Tensor(const V&)>;
namespace ops = core;

std::string no_gpu() {
  if (!COHORT_USE_CUDA) return "this build has no CUDA (COHORT_USE_CUDA=OFF)";
  if (core::cuda::device_count() == 0) return "needs a GPU: " + core::cuda::unavailable_reason();
  return "";
}
#define NEED_GPU() \
  if (const std::string why = no_gpu(); !why.empty()) GTEST_SKIP() << why

const core::Device kGpu = core::Device::cuda(0);

Tensor rnd(const core::Shape& s, uint64_t seed, DType dt = DType::kFloat64, double lo = -1,
           double hi = 1, bool grad = true) {
  core::Generator g(seed);
  Tensor t =
      core::add(core::mul(core::rand(s, core::TensorOptions(DType::kFloat64), &g), hi - lo), lo)
          .to(dt);
  if (grad) t.set_requires_grad(true);
  return t;
}

// Largest |a - b| relative to the largest |b| (or absolute below 1).
double max_error(const Tensor& a, const Tensor& b) {
  Tensor x = a.detach().to(core::Device::cpu()).to(DType::kFloat64);
  Tensor y = b.detach().to(core::Device::cpu()).to(DType::kFloat64);
  const double scale = std::max(1.0, ops::max(ops::abs(y)).item<double>());
  return ops::max(ops::abs(ops::sub(x, y))).item<double>() / scale;
}

// f on the CPU and on the GPU from the same inputs; then backward of both from the same upstream
// gradient. Every output and every input gradient must agree within tol.
::testing::AssertionResult same_on_gpu(const Fn& f, const V& inputs, double tol) {
  V cpu, gpu;
  for (const Tensor& x : inputs) {
    Tensor c = x.detach().clone(), g = x.detach().to(kGpu);
    if (x.requires_grad()) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    cpu.push_back(c);
    gpu.push_back(g);
  }
  Tensor yc = f(cpu), yg = f(gpu);
  if (yg.device() != kGpu) return ::testing::AssertionFailure() << "the result is not on the GPU";
  if (yc.sizes() != yg.sizes())
    return ::testing::AssertionFailure() << "shapes differ: " << core::shape_str(yc.sizes())
                                         << " vs " << core::shape_str(yg.sizes());
  if (yc.dtype() != yg.dtype()) return ::testing::AssertionFailure() << "dtypes differ";
  const double e = max_error(yg, yc);
  if (!(e <= tol)) return ::testing::AssertionFailure() << "forward differs by " << e;
  if (!yc.requires_grad()) return ::testing::AssertionSuccess();
  core::Generator gen(99);
  Tensor up = core::randn(yc.sizes(), core::TensorOptions(yc.dtype()), &gen);
  yc.backward(up);
  yg.backward(up.to(kGpu));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].requires_grad()) continue;
    if (!gpu[i].grad().defined())
      return ::testing::AssertionFailure() << "input " << i << " got no gradient on the GPU";
    if (gpu[i].grad().device() != kGpu)
      return ::testing::AssertionFailure() << "input " << i << "'s gradient is not on the GPU";
    const double ge = max_error(gpu[i].grad(), cpu[i].grad());
    if (!(ge <= tol))
      return ::testing::AssertionFailure() << "gradient of input " << i << " differs by " << ge;
  }
  return ::testing::AssertionSuccess();
}

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    NEED_GPU();
    core::cuda::set_allow_tf32(false);
  }
  void TearDown() override { core::cuda::set_allow_tf32(true); }
};

constexpr double k64 = 1e-10, k32 = 2e-5;

TEST_F(CudaOps, BinaryWithBroadcastingAndViews) {
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    const double tol = dt == DType::kFloat64 ? k64 : k32;
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::add(x[0], x[1]); },
                            {rnd({3, 4}, 1, dt), rnd({4}, 2, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::sub(x[0], x[1]); },
                            {rnd({2, 1, 3}, 3, dt), rnd({4, 1}, 4, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::mul(x[0].t(), x[1]); },
                            {rnd({4, 3}, 5, dt), rnd({3, 1}, 6, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::div(x[0], x[1]); },
                            {rnd({3, 4}, 7, dt), rnd({4}, 8, dt, 0.5, 2.0)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::pow(x[0], x[1]); },
                            {rnd({5}, 9, dt, 0.5, 2.0), rnd({5}, 10, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::maximum(x[0], x[1]); },
                            {rnd({6}, 11, dt), rnd({6}, 12, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::minimum(x[0], x[1]); },
                            {rnd({6}, 13, dt), rnd({6}, 14, dt)}, tol));
    // Strided operands: a permuted, sliced, expanded view.
    EXPECT_TRUE(same_on_gpu(
        [](const V& x) {
          return ops::mul(x[0].permute({2, 0, 1}).slice(1, 1, 3), x[1].expand({3, 2, 4}));
        },
        {rnd({4, 4, 3}, 15, dt), rnd({1, 2, 4}, 16, dt)}, tol));
  }
}

TEST_F(CudaOps, Unary) {
  auto pos = [](uint64_t s) { return rnd({3, 5}, s, DType::kFloat64, 0.2, 3.0); };
  auto any = [](uint64_t s) { return rnd({3, 5}, s, DType::kFloat64, -3, 3); };
  const std::vector<std::pair<Fn, Tensor>> cases = {
      {[](const V& x) { return ops::neg(x[0]); }, any(1)},
      {[](const V& x) { return ops::exp(x[0]); }, any(2)},
      {[](const V& x) { return ops::log(x[0]); }, pos(3)},
      {[](const V& x) { return ops::sqrt(x[0]); }, pos(4)},
      {[](const V& x) { return ops::rsqrt(x[0]); }, pos(5)},
      {[](const V& x) { return ops::abs(x[0]); }, any(6)},
      {[](const V& x) { return ops::square(x[0]); }, any(7)},
      {[](const V& x) { return ops::clamp(x[0], -0.5, 0.5); }, any(8)},
      {[](const V& x) { return ops::relu(x[0]); }, any(9)},
      {[](const V& x) { return ops::gelu(x[0]); }, any(10)},
      {[](const V& x) { return ops::gelu(x[0], "tanh"); }, any(11)},
      {[](const V& x) { return ops::tanh(x[0]); }, any(12)},
      {[](const V& x) { return ops::sigmoid(x[0]); }, any(13)},
      {[](const V& x) { return ops::silu(x[0]); }, any(14)},
      {[](const V& x) { return ops::pow(x[0], 2.5); }, pos(15)},
      {[](const V& x) { return ops::sign(x[0]); }, any(16)},
  };
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_TRUE(same_on_gpu(cases[i].first, {cases[i].second}, k64)) << "case " << i;
}

TEST_F(CudaOps, ComparisonsWhereAndDtypes) {
  Tensor a = rnd({4, 5}, 1, DType::kFloat64, -1, 1, false);
  Tensor b = rnd({5}, 2, DType::kFloat64, -1, 1, false);
  for (auto f : std::vector<Fn>{[](const V& x) { return ops::lt(x[0], x[1]); },
                                [](const V& x) { return ops::ge(x[0], x[1]); },
                                [](const V& x) { return ops::eq(x[0], x[0]); },
                                [](const V& x) { return ops::logical_not(ops::gt(x[0], x[1])); }})
    EXPECT_TRUE(same_on_gpu(f, {a, b}, 0));
  EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::where(ops::gt(x[0], x[1]), x[0], x[1]); },
                          {rnd({4, 5}, 3), rnd({5}, 4)}, k64));
  EXPECT_TRUE(
      same_on_gpu([](const V& x) { return ops::masked_fill(x[0], ops::lt(x[0], x[1]), -7.0); },
                  {rnd({4, 5}, 5), rnd({5}, 6, DType::kFloat64, -1, 1, false)}, k64));
  // Conversions on the device, 16-bit floats and integers included.
  for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kFloat16, DType::kInt64, DType::kInt32,
                   DType::kUInt8, DType::kBool}) {
    Tensor x = ops::mul(rnd({7, 3}, 7, DType::kFloat64, -2, 200, false), 1.0);
    Tensor on_cpu = x.to(dt).to(DType::kFloat64);
    Tensor on_gpu = x.to(kGpu).to(dt).to(DType::kFloat64).to(core::Device::cpu());
    EXPECT_EQ(max_error(on_gpu, on_cpu), 0) << core::dtype_name(dt);
  }
  // Integer arithmetic.
  Tensor i = core::arange(-6, 6, 1, core::TensorOptions(DType::kInt64)).view({3, 4});
  EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::mul(ops::add(x[0], x[0]), x[0]); }, {i}, 0));
}

TEST_F(CudaOps, Reductions) {
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    const double tol = dt == DType::kFloat64 ? k64 : k32;
    EXPECT_TRUE(
        same_on_gpu([](const V& x) { return ops::sum(x[0]); }, {rnd({3, 4, 5}, 1, dt)}, tol));
    EXPECT_TRUE(same_on_gpu(
        [](const V& x) {
          return ops::sum(x[0], {0, 2}, true);
        },
        {rnd({3, 4, 5}, 2, dt)}, tol));
    EXPECT_TRUE(
        same_on_gpu([](const V& x) { return ops::mean(x[0], {1}); }, {rnd({3, 4, 5}, 3, dt)}, tol));
    EXPECT_TRUE(
        same_on_gpu([](const V& x) { return ops::var(x[0], {0}, 1); }, {rnd({6, 5}, 4, dt)}, tol));
    EXPECT_TRUE(
        same_on_gpu([](const V& x) { return ops::max(x[0], 1).first; }, {rnd({3, 7}, 5, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::min(x[0], 0, true).first; },
                            {rnd({3, 7}, 6, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::argmax(x[0], 1); },
                            {rnd({5, 9}, 7, dt, -1, 1, false)}, 0));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::max(x[0]); }, {rnd({5, 9}, 8, dt)}, tol));
    // Long reductions (a block per output) and many short ones (a thread per output).
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::sum(x[0], {0}); }, {rnd({3000, 3}, 9, dt)},
                            tol * 10));
    EXPECT_TRUE(
        same_on_gpu([](const V& x) { return ops::sum(x[0], {1}); }, {rnd({2000, 7}, 10, dt)}, tol));
  }
}

TEST_F(CudaOps, MatmulAndLinear) {
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    const double tol = dt == DType::kFloat64 ? k64 : k32;
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::matmul(x[0], x[1]); },
                            {rnd({5, 7}, 1, dt), rnd({7, 3}, 2, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::matmul(x[0].t(), x[1].t()); },
                            {rnd({7, 5}, 3, dt), rnd({3, 7}, 4, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::matmul(x[0], x[1]); },
                            {rnd({4, 5, 6}, 5, dt), rnd({6, 2}, 6, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::matmul(x[0], x[1]); },
                            {rnd({2, 3, 5, 6}, 7, dt), rnd({2, 3, 6, 4}, 8, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::linear(x[0], x[1], x[2]); },
                            {rnd({8, 20}, 9, dt), rnd({16, 20}, 10, dt), rnd({16}, 11, dt)}, tol));
  }
}

TEST_F(CudaOps, Tf32MatmulIsCloseToFloat32) {
  core::cuda::set_allow_tf32(true);
  // TF32 keeps 10 mantissa bits: about 1e-3 relative per product, less after summation.
  EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::matmul(x[0], x[1]); },
                          {rnd({64, 256}, 1, DType::kFloat32), rnd({256, 32}, 2, DType::kFloat32)},
                          5e-3));
}

TEST_F(CudaOps, Convolutions) {
  struct Case {
    core::Conv2dOptions o;
    core::Shape x, w;
  };
  std::vector<Case> cases;
  cases.push_back({{}, {2, 3, 8, 8}, {4, 3, 3, 3}});
  core::Conv2dOptions strided;
  strided.stride = {2, 1};
  strided.padding = {1, 2};
  cases.push_back({strided, {2, 3, 9, 7}, {5, 3, 3, 2}});
  core::Conv2dOptions dilated;
  dilated.dilation = {2, 2};
  dilated.padding = {2, 2};
  cases.push_back({dilated, {1, 2, 7, 7}, {3, 2, 3, 3}});
  core::Conv2dOptions grouped;
  grouped.groups = 2;
  grouped.padding = {1, 1};
  cases.push_back({grouped, {2, 4, 6, 6}, {6, 2, 3, 3}});
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    const double tol = dt == DType::kFloat64 ? k64 : k32;
    for (auto algorithm : {core::Conv2dAlgorithm::kAuto, core::Conv2dAlgorithm::kIm2col}) {
      for (size_t i = 0; i < cases.size(); ++i) {
        core::Conv2dOptions o = cases[i].o;
        o.algorithm = algorithm;
        EXPECT_TRUE(same_on_gpu([o](const V& x) { return ops::conv2d(x[0], x[1], x[2], o); },
                                {rnd(cases[i].x, 1 + i, dt), rnd(cases[i].w, 2 + i, dt),
                                 rnd({cases[i].w[0]}, 3 + i, dt)},
                                tol))
            << "case " << i << " algorithm " << static_cast<int>(algorithm) << " "
            << core::dtype_name(dt);
      }
    }
  }
  Tensor x = core::zeros({1, 3, 8, 8}).to(kGpu), w = core::zeros({4, 3, 3, 3}).to(kGpu);
  EXPECT_EQ(core::conv2d_algorithm(x, w, {}), core::Conv2dAlgorithm::kLibrary);
}

TEST_F(CudaOps, Pooling) {
  core::Pool2dOptions two;
  core::Pool2dOptions padded;
  padded.kernel = {3, 3};
  padded.stride = {2, 2};
  padded.padding = {1, 1};
  padded.count_include_pad = false;
  for (const auto& o : {two, padded}) {
    EXPECT_TRUE(same_on_gpu([o](const V& x) { return ops::max_pool2d(x[0], o); },
                            {rnd({2, 3, 7, 8}, 1)}, k64));
    EXPECT_TRUE(same_on_gpu([o](const V& x) { return ops::avg_pool2d(x[0], o); },
                            {rnd({2, 3, 7, 8}, 2)}, k64));
  }
}

TEST_F(CudaOps, NeuralNetworkFunctions) {
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    const double tol = dt == DType::kFloat64 ? k64 : k32;
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::softmax(x[0], 1); },
                            {rnd({4, 700}, 1, dt, -5, 5)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::log_softmax(x[0], 0); },
                            {rnd({6, 5}, 2, dt, -5, 5)}, tol));
    Tensor target = core::from_vector(std::vector<int64_t>{3, 0, -100, 9, 4, 1}, {6});
    for (double smoothing : {0.0, 0.1}) {
      ops::CrossEntropyOptions o;
      o.label_smoothing = smoothing;
      EXPECT_TRUE(same_on_gpu([o](const V& x) { return ops::cross_entropy(x[0], x[1], o); },
                              {rnd({6, 10}, 3, dt, -4, 4), target}, tol));
    }
    ops::CrossEntropyOptions none;
    none.reduction = ops::Reduction::kNone;
    EXPECT_TRUE(same_on_gpu([none](const V& x) { return ops::cross_entropy(x[0], x[1], none); },
                            {rnd({6, 10}, 4, dt, -4, 4), target}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::mse_loss(x[0], x[1]); },
                            {rnd({5, 3}, 5, dt), rnd({5, 3}, 6, dt)}, tol));
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::layer_norm(x[0], {48}, x[1], x[2]); },
                            {rnd({2, 5, 48}, 7, dt, -3, 3), rnd({48}, 8, dt), rnd({48}, 9, dt)},
                            tol));
    Tensor idx = core::from_vector(std::vector<int64_t>{2, 0, 2, 5, 1, 2}, {2, 3});
    EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::embedding(x[0], x[1]); },
                            {rnd({6, 4}, 10, dt), idx}, tol));
    EXPECT_TRUE(same_on_gpu(
        [](const V& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], true); },
        {rnd({2, 3, 5, 8}, 11, dt), rnd({2, 3, 5, 8}, 12, dt), rnd({2, 3, 5, 8}, 13, dt)}, tol));
    // Rows of more than 1024 keys take the block kernels instead of a warp per row.
    EXPECT_TRUE(same_on_gpu(
        [](const V& x) { return ops::scaled_dot_product_attention(x[0], x[1], x[2], true); },
        {rnd({1, 1030, 4}, 15, dt), rnd({1, 1030, 4}, 16, dt), rnd({1, 1030, 4}, 17, dt)}, tol));
    // Dropout draws its mask from the generator on the host: the same seed, the same mask.
    EXPECT_TRUE(same_on_gpu(
        [](const V& x) {
          core::Generator g(5);
          return ops::dropout(x[0], 0.3, true, &g);
        },
        {rnd({8, 9}, 14, dt)}, tol));
  }
}

TEST_F(CudaOps, ShapesAndIndexing) {
  EXPECT_TRUE(same_on_gpu(
      [](const V& x) {
        return ops::cat({x[0], x[1].t()}, 0);
      },
      {rnd({2, 3}, 1), rnd({3, 4}, 2)}, k64));
  EXPECT_TRUE(same_on_gpu(
      [](const V& x) {
        return ops::stack({x[0], x[1]}, 1);
      },
      {rnd({2, 3}, 3), rnd({2, 3}, 4)}, k64));
  EXPECT_TRUE(
      same_on_gpu([](const V& x) { return ops::split(x[0], 2, 1)[1]; }, {rnd({3, 5}, 5)}, k64));
  Tensor idx = core::from_vector(std::vector<int64_t>{3, 0, 3, 1}, {4});
  EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::index_select(x[0], 1, x[1]); },
                          {rnd({2, 4, 3}, 6), idx}, k64));
  // Same-dtype copies with a dense innermost dim move 16 bytes per thread; a misaligned start
  // (the slice from element 1) takes the element-wise path.
  for (DType dt : {DType::kFloat64, DType::kFloat32, DType::kBFloat16}) {
    const bool grad = dt != DType::kBFloat16;
    EXPECT_TRUE(same_on_gpu(
        [](const V& x) {
          return x[0].permute({1, 0, 2}).contiguous();
        },
        {rnd({3, 5, 16}, 8, dt, -1, 1, grad)}, 0))
        << core::dtype_name(dt);
    EXPECT_TRUE(same_on_gpu([](const V& x) { return x[0].slice(2, 8, 24).contiguous(); },
                            {rnd({3, 5, 24}, 9, dt, -1, 1, grad)}, 0))
        << core::dtype_name(dt);
    EXPECT_TRUE(same_on_gpu([](const V& x) { return x[0].slice(2, 1, 17).contiguous(); },
                            {rnd({3, 5, 24}, 10, dt, -1, 1, grad)}, 0))
        << core::dtype_name(dt);
  }
  Tensor gi = core::from_vector(std::vector<int64_t>{0, 2, 2, 1, 0, 0}, {2, 3});
  EXPECT_TRUE(same_on_gpu([](const V& x) { return ops::gather(x[0], 1, x[1]); },
                          {rnd({2, 4}, 7), gi}, k64));
}

TEST_F(CudaOps, AnIndexOutOfRangeIsAnErrorAtTheNextSynchronisation) {
  Tensor w = core::ones({5, 3}).to(kGpu);
  Tensor bad = core::from_vector(std::vector<int64_t>{1, 7}, {2}).to(kGpu);
  try {
    Tensor y = ops::embedding(w, bad);
    (void)y.to(core::Device::cpu());
    ADD_FAILURE() << "index 7 of 5 rows was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("index 7 is out of range for a dimension of size 5"),
              std::string::npos)
        << e.what();
  }
  // The error is reported once; the device keeps working.
  EXPECT_EQ(ops::sum(w).item<float>(), 15.0f);
}

// A few SGD steps of the CNN end where the CPU's end: model, loss, autograd and optimiser
// together (float32 without TF32; the CPU convolves by Winograd, the GPU by cuDNN).
TEST_F(CudaOps, CnnTrainingStepsMatchTheCpu) {
  auto run = [](core::Device device) {
    core::Generator gen(7);
    auto model = std::make_shared<core::nn::CNN>(1, 10, &gen);
    model->to(device);
    core::optim::SGDOptions so;
    so.lr = 0.05;
    so.momentum = 0.9;
    core::optim::SGD opt(model->parameters(), so);
    core::Generator data(3);
    for (int step = 0; step < 3; ++step) {
      Tensor x = core::randn({4, 1, 28, 28}, core::TensorOptions(), &data);
      Tensor y = core::randint(0, 10, {4}, core::TensorOptions(DType::kInt64), &data);
      opt.zero_grad();
      Tensor loss = ops::cross_entropy(model->forward(x.to(device)), y.to(device));
      loss.backward();
      opt.step();
    }
    return model->state_dict();
  };
  auto cpu = run(core::Device::cpu()), gpu = run(kGpu);
  ASSERT_EQ(cpu.size(), gpu.size());
  for (auto& [name, t] : cpu) EXPECT_LT(max_error(gpu.at(name), t), 1e-4) << name;
}

// 16-bit floats (the dtypes of mixed-precision backward) compute in float and round once: exactly
// the CPU's float32 result rounded, for elementwise ops; sums within the rounding of the result.
TEST_F(CudaOps, SixteenBitElementwiseAndSums) {
  for (DType low : {DType::kBFloat16, DType::kFloat16}) {
    Tensor a = rnd({64, 33}, 1, DType::kFloat32, -4, 4, false).to(low);
    Tensor b = rnd({33}, 2, DType::kFloat32, -4, 4, false).to(low);
    auto f32 = [](const Tensor& t) { return t.to(DType::kFloat32); };
    // add, mul and relu round exactly as the CPU; tanh may differ in float's last bit, which
    // can move gelu's result by one 16-bit step.
    const double ulp = low == DType::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
    const std::vector<std::pair<Fn, double>> cases = {
        {[](const V& x) { return ops::add(x[0], x[1]); }, 0.0},
        {[](const V& x) { return ops::mul(x[0], x[1]); }, 0.0},
        {[](const V& x) { return ops::relu(x[0]); }, 0.0},
        {[](const V& x) { return ops::gelu(x[0], "tanh"); }, ulp}};
    for (const auto& [f, tol] : cases) {
      Tensor want = f({f32(a), f32(b)}).to(low);
      Tensor got = f({a.to(kGpu), b.to(kGpu)});
      ASSERT_EQ(got.dtype(), low);
      EXPECT_LE(max_error(got, want), tol) << core::dtype_name(low);
    }
    Tensor want = ops::sum(f32(a), {0});
    Tensor got = ops::sum(a.to(kGpu), {0});
    ASSERT_EQ(got.dtype(), low);
    EXPECT_LT(max_error(got, want), low == DType::kBFloat16 ? 1e-2 : 1e-3);
  }
}

// Large bfloat16 products whose leading dimension is not a multiple of 16 bytes (GPT-2's output
// head: 50257 classes) are computed in padded buffers; forward (with the bias's beta = 1) and
// backward still equal the float32 CPU result within bfloat16's rounding.
TEST_F(CudaOps, MisalignedLargeProductsArePadded) {
  Tensor x = rnd({64, 128}, 1, DType::kFloat32), w = rnd({50257, 128}, 2, DType::kFloat32),
         b = rnd({50257}, 3, DType::kFloat32);
  Tensor up = rnd({64, 50257}, 4, DType::kFloat32, -1, 1, false);
  ops::sum(ops::mul(ops::linear(x, w, b), up)).backward();
  Tensor ref = ops::linear(x.detach(), w.detach(), b.detach());
  V gpu{x.detach().to(kGpu), w.detach().to(kGpu), b.detach().to(kGpu)};
  for (Tensor& t : gpu) t.set_requires_grad(true);
  Tensor y;
  {
    core::AutocastGuard autocast(DType::kBFloat16);
    y = ops::linear(gpu[0], gpu[1], gpu[2]);
  }
  ASSERT_EQ(y.dtype(), DType::kBFloat16);
  EXPECT_LT(max_error(y, ref), 0.05);  // sums of 128 products of bfloat16-rounded inputs
  ops::sum(ops::mul(y.to(DType::kFloat32), up.to(kGpu))).backward();
  EXPECT_LT(max_error(gpu[0].grad(), x.grad()), 0.05);
  EXPECT_LT(max_error(gpu[1].grad(), w.grad()), 0.05);
  EXPECT_LT(max_error(gpu[2].grad(), b.grad()), 0.05);
}

// The fused AdamW kernel against the op-by-op update on the CPU.
TEST_F(CudaOps, AdamWStepsMatchTheCpu) {
  auto run = [](core::Device device) {
    Tensor p = rnd({1000}, 1, DType::kFloat32, -1, 1, false).to(device);
    p.set_requires_grad(true);
    core::optim::AdamWOptions o;
    o.lr = 0.01;
    o.weight_decay = 0.1;
    core::optim::AdamW opt({p}, o);
    for (int step = 0; step < 5; ++step) {
      opt.zero_grad();
      ops::sum(ops::mul(ops::square(p),
                        rnd({1000}, 10 + step, DType::kFloat32, -1, 1, false).to(device)))
          .backward();
      opt.step();
    }
    return p.detach();
  };
  EXPECT_LT(max_error(run(kGpu), run(core::Device::cpu())), 1e-6);
}

// Autocast: matmuls, linear layers and attention of float32 CUDA tensors run in bfloat16 (or
// float16) and return it, within its rounding of the float32 result; a 16-bit activation meets a
// float32 weight in the next layer; layer norm and cross-entropy take 16-bit inputs in float32;
// gradients reach the float32 leaves in float32.
TEST_F(CudaOps, AutocastComputesInSixteenBits) {
  for (DType low : {DType::kBFloat16, DType::kFloat16}) {
    const double tol = low == DType::kBFloat16 ? 2e-2 : 4e-3;
    Tensor x = rnd({32, 64}, 1, DType::kFloat32), w = rnd({48, 64}, 2, DType::kFloat32),
           b = rnd({48}, 3, DType::kFloat32);
    Tensor q = rnd({2, 3, 16, 8}, 4, DType::kFloat32), k = rnd({2, 3, 16, 8}, 5, DType::kFloat32),
           v = rnd({2, 3, 16, 8}, 6, DType::kFloat32);
    Tensor ref_lin = ops::linear(x, w, b);
    Tensor ref_att = ops::scaled_dot_product_attention(q, k, v, true);
    V gpu{x.detach().to(kGpu), w.detach().to(kGpu), b.detach().to(kGpu),
          q.detach().to(kGpu), k.detach().to(kGpu), v.detach().to(kGpu)};
    for (Tensor& t : gpu) t.set_requires_grad(true);
    Tensor w2 = rnd({10, 48}, 7, DType::kFloat32).to(kGpu);
    Tensor target = core::from_vector(std::vector<int64_t>(32, 3), {32}).to(kGpu);
    Tensor lin, att, loss, normed;
    {
      core::AutocastGuard autocast(low);
      EXPECT_EQ(core::autocast_dtype(), low);
      lin = ops::linear(gpu[0], gpu[1], gpu[2]);
      att = ops::scaled_dot_product_attention(gpu[3], gpu[4], gpu[5], true);
      Tensor logits = ops::linear(ops::gelu(lin, "tanh"), w2, Tensor());  // 16-bit meets float32
      EXPECT_EQ(logits.dtype(), low);
      loss = ops::cross_entropy(logits, target);
      normed = ops::layer_norm(lin, {48}, Tensor(), Tensor());
    }
    EXPECT_EQ(core::autocast_dtype(), DType::kFloat32);
    EXPECT_EQ(lin.dtype(), low);
    EXPECT_EQ(att.dtype(), low);
    EXPECT_EQ(loss.dtype(), DType::kFloat32);
    EXPECT_EQ(normed.dtype(), DType::kFloat32);
    EXPECT_LT(max_error(lin, ref_lin), tol * 8);  // sums of 64 rounded products
    EXPECT_LT(max_error(att, ref_att), tol);
    ops::add(ops::add(ops::sum(lin), ops::sum(att)), ops::add(loss, ops::sum(normed))).backward();
    for (const Tensor& t : gpu) {
      ASSERT_TRUE(t.grad().defined());
      EXPECT_EQ(t.grad().dtype(), DType::kFloat32);
    }
  }
}

TEST_F(CudaOps, CachingAllocatorReusesBlocksAndCountsThem) {
  core::cuda::synchronize();
  core::cuda::release_cache();  // so that the first request below must go to the driver
  core::cuda::reset_peak_memory();
  const core::cuda::MemoryStats before = core::cuda::memory_stats();
  ASSERT_EQ(before.cached, 0u);
  constexpr size_t kBytes = size_t{12} << 20;
  {
    Tensor a =
        core::empty({static_cast<int64_t>(kBytes / 4)}, core::TensorOptions().with_device(kGpu));
    const core::cuda::MemoryStats live = core::cuda::memory_stats();
    EXPECT_EQ(live.allocated, before.allocated + kBytes);
    EXPECT_EQ(live.device_allocations, before.device_allocations + 1);
    EXPECT_EQ(live.reserved, before.reserved + kBytes);
  }
  const core::cuda::MemoryStats freed = core::cuda::memory_stats();
  EXPECT_EQ(freed.allocated, before.allocated);
  EXPECT_EQ(freed.cached, before.cached + kBytes);
  EXPECT_GE(freed.peak_allocated, before.allocated + kBytes);
  {
    Tensor b =
        core::empty({static_cast<int64_t>(kBytes / 4)}, core::TensorOptions().with_device(kGpu));
  }
  const core::cuda::MemoryStats reused = core::cuda::memory_stats();
  EXPECT_EQ(reused.device_allocations, freed.device_allocations);  // no cudaMalloc: the cache
  EXPECT_EQ(reused.cache_hits, freed.cache_hits + 1);
  EXPECT_EQ(reused.cached, freed.cached);
  core::cuda::release_cache();
  EXPECT_EQ(core::cuda::memory_stats().cached, 0u);
  EXPECT_EQ(core::cuda::memory_stats().reserved, reused.reserved - reused.cached);
}

}  // namespace
}  // namespace cohort::test
