// Tensor semantics: views share storage, broadcasting, dtypes and conversions, factories, printing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "core/autograd/grad_mode.h"
#include "core/ops/backend.h"
#include "core/ops/ops.h"

namespace cohort::core {
namespace {

TEST(Tensor, LargeCpuBlocksAreReusedAndReleasable) {
  release_cpu_cache();
  void* first = nullptr;
  {
    Tensor big = zeros({1 << 18});  // 1 MiB: above the caching threshold
    first = big.raw_data();
  }
  EXPECT_GE(cpu_cached_bytes(), size_t{1} << 20);
  Tensor again = ones({(1 << 18) - 7});  // same size class: the cached block comes back
  EXPECT_EQ(again.raw_data(), first);
  EXPECT_EQ(sum(again).item<float>(), static_cast<float>((1 << 18) - 7));  // and is written fresh
  { Tensor small = zeros({1000}); }
  EXPECT_EQ(cpu_cached_bytes(), size_t{0});  // small blocks go straight back to malloc
  release_cpu_cache();
  EXPECT_EQ(cpu_cached_bytes(), size_t{0});
}

TEST(Tensor, ViewsShareStorage) {
  Tensor a = arange(12, TensorOptions(DType::kFloat32)).view({3, 4});
  Tensor t = a.t();
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.sizes(), (Shape{4, 3}));
  EXPECT_EQ(t.strides(), (Shape{1, 4}));
  Tensor s = a.slice(1, 1, 3);
  s.fill_(-1);
  EXPECT_EQ(a.select(0, 2).select(0, 1).item<float>(), -1.0f);
  EXPECT_EQ(a.select(0, 2).select(0, 3).item<float>(), 11.0f);
  EXPECT_EQ(a.version(), s.version());
  Tensor p = arange(24).view({2, 3, 4}).permute({2, 0, 1});
  EXPECT_EQ(p.sizes(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.contiguous().view({-1}).slice(0, 0, 3).str(), "tensor([0, 4, 8])");
  EXPECT_THROW(p.view({24}), InvalidArgument);
  EXPECT_EQ(p.reshape({24}).numel(), 24);
  EXPECT_EQ(a.unsqueeze(0).sizes(), (Shape{1, 3, 4}));
  EXPECT_EQ(a.unsqueeze(-1).squeeze(-1).sizes(), (Shape{3, 4}));
  EXPECT_EQ(a.expand({2, 3, 4}).strides(), (Shape{0, 4, 1}));
  EXPECT_THROW(a.expand({3, 5}), InvalidArgument);
  EXPECT_EQ(a.slice(0, 0, 3, 2).sizes(), (Shape{2, 4}));
  EXPECT_EQ(a.flatten().sizes(), (Shape{12}));
}

// A tensor over shared memory keeps the mapping alive through its views, and lets it go with
// the last of them.
TEST(Tensor, FromBlobWithAnOwnerHoldsItAsLongAsAnyViewLives) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4});
  std::weak_ptr<std::vector<float>> watch = owner;
  Tensor t = from_blob(owner->data(), {2, 2}, DType::kFloat32, owner);
  owner.reset();
  ASSERT_FALSE(watch.expired());
  Tensor row = t.select(0, 1);
  t = Tensor();
  ASSERT_FALSE(watch.expired());
  EXPECT_EQ(row.data_ptr<float>()[1], 4.0f);
  row = Tensor();
  EXPECT_TRUE(watch.expired());
}

TEST(Tensor, SetMakesATensorAViewOfOtherMemoryKeepingItsIdentity) {
  Tensor p = arange(6, TensorOptions(DType::kFloat32)).view({2, 3});
  p.set_requires_grad(true);
  p.set_grad(ones({2, 3}));
  Tensor handle = p;  // another handle to the same tensor, as a module and an optimiser hold
  Tensor flat = zeros({10});
  const uint64_t before = flat.version();
  {
    autograd::NoGradGuard g;
    Tensor slot = flat.narrow(0, 2, 6).view({2, 3});
    slot.copy_(p);
    EXPECT_THROW(p.set_(zeros({2, 3}, DType::kFloat64)), InvalidArgument);
    p.set_(slot);
  }
  EXPECT_GT(flat.version(), before + 1);  // the copy and the set_ each bump it
  EXPECT_EQ(handle.raw_data(), flat.data_ptr<float>() + 2);
  EXPECT_EQ(handle.sizes(), (Shape{2, 3}));
  EXPECT_TRUE(handle.requires_grad());
  EXPECT_EQ(sum(handle.grad()).item<float>(), 6.0f);
  flat.narrow(0, 7, 1).fill_(40);  // element [1, 2] of p
  EXPECT_EQ(handle.select(0, 1).select(0, 2).item<float>(), 40.0f);
  EXPECT_EQ(handle.select(0, 0).select(0, 1).item<float>(), 1.0f);
  EXPECT_THROW(p.set_(flat), InvalidArgument);  // requires grad, outside a NoGradGuard
}

TEST(Tensor, BroadcastingFollowsNumpyRules) {
  Tensor a = arange(3, TensorOptions(DType::kFloat32)).view({3, 1});
  Tensor b = arange(4, TensorOptions(DType::kFloat32));
  Tensor c = add(a, b);
  EXPECT_EQ(c.sizes(), (Shape{3, 4}));
  EXPECT_EQ(c.select(0, 2).select(0, 3).item<float>(), 5.0f);
  EXPECT_EQ(broadcast_shapes({2, 1, 5}, {3, 1}), (Shape{2, 3, 5}));
  EXPECT_THROW(add(ones({2, 3}), ones({4})), InvalidArgument);
  // Broadcast operands may be non-contiguous views.
  Tensor d = mul(a.t(), b.view({4, 1}));
  EXPECT_EQ(d.sizes(), (Shape{4, 3}));
  EXPECT_EQ(d.select(0, 3).select(0, 2).item<float>(), 6.0f);
}

TEST(Tensor, DtypesAndPromotion) {
  Tensor i = arange(5);
  EXPECT_EQ(i.dtype(), DType::kInt64);
  EXPECT_EQ(add(i, ones({5})).dtype(), DType::kFloat32);
  EXPECT_EQ(add(ones({1}, DType::kFloat64), ones({1})).dtype(), DType::kFloat64);
  EXPECT_EQ(div(i, 2.0).dtype(), DType::kFloat32);
  EXPECT_EQ(sum(ones({3}, DType::kBool)).dtype(), DType::kInt64);
  EXPECT_EQ(sum(ones({3}, DType::kBool)).item<int64_t>(), 3);
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kInt64, DType::kInt32, DType::kUInt8,
                  DType::kBool, DType::kBFloat16, DType::kFloat16}) {
    Tensor x = tensor({0, 1, 2, 3}).to(d);
    EXPECT_EQ(x.dtype(), d);
    EXPECT_EQ(x.to(DType::kFloat32).select(0, 1).item<float>(), 1.0f) << dtype_name(d);
  }
}

TEST(Tensor, HalfPrecisionConversionsRoundToNearestEven) {
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f)), 1.0f);
  EXPECT_EQ(BFloat16(1.00390625f).bits, 0x3f80);  // halfway: ties to even
  EXPECT_EQ(BFloat16(1.01171875f).bits, 0x3f82);
  EXPECT_EQ(Float16(1.0f).bits, 0x3c00);
  EXPECT_EQ(Float16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(Float16(1e6f).bits, 0x7c00);           // overflow to inf
  EXPECT_EQ(Float16(5.9604645e-8f).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(static_cast<float>(Float16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(static_cast<float>(Float16(NAN))));
  Tensor x = tensor({0.1, -3.75, 1000.0});
  EXPECT_TRUE(allclose(x.to(DType::kFloat16).to(DType::kFloat32), x, 1e-3));
  EXPECT_TRUE(allclose(x.to(DType::kBFloat16).to(DType::kFloat32), x, 1e-2));
  EXPECT_THROW(add(x.to(DType::kFloat16), x.to(DType::kFloat16)), InvalidArgument);
}

TEST(Tensor, FactoriesAndSeededRandomness) {
  EXPECT_EQ(zeros({2, 3}).numel(), 6);
  EXPECT_EQ(full({2}, 7.5).select(0, 1).item<float>(), 7.5f);
  EXPECT_EQ(arange(1, 2, 0.25, TensorOptions(DType::kFloat64)).numel(), 4);
  Generator g1(42), g2(42);
  EXPECT_TRUE(allclose(randn({100}, {}, &g1), randn({100}, {}, &g2)));
  Tensor u = rand({10000}, {}, &g1);
  EXPECT_GE(min(u).item<float>(), 0.0f);
  EXPECT_LT(max(u).item<float>(), 1.0f);
  EXPECT_NEAR(mean(u).item<double>(), 0.5, 0.02);
  Tensor n = randn({20000}, DType::kFloat64, &g1);
  EXPECT_NEAR(mean(n).item<double>(), 0.0, 0.03);
  EXPECT_NEAR(var(n, {0}).item<double>(), 1.0, 0.05);
  Tensor w = empty({256, 64});
  kaiming_uniform_(w, std::sqrt(5.0), &g1);
  EXPECT_LE(max(abs(w)).item<float>(), 1.0f / 8.0f + 1e-6f);  // bound = 1/sqrt(fan_in)
  Tensor perm = randperm(50, &g1);
  EXPECT_EQ(sum(perm).item<int64_t>(), 50 * 49 / 2);
  std::vector<float> buf{1, 2, 3, 4};
  Tensor blob = from_blob(buf.data(), {2, 2}, DType::kFloat32);
  buf[3] = 9;
  EXPECT_EQ(blob.select(1, 1).select(0, 1).item<float>(), 9.0f);
  Generator::State st = g1.state();
  double a = g1.uniform();
  g1.set_state(st);
  EXPECT_EQ(a, g1.uniform());
}

TEST(Tensor, CatStackSplitGather) {
  Tensor a = arange(6, TensorOptions(DType::kFloat32)).view({2, 3});
  Tensor c = cat({a, a}, 0);
  EXPECT_EQ(c.sizes(), (Shape{4, 3}));
  EXPECT_EQ(stack({a, a, a}, 1).sizes(), (Shape{2, 3, 3}));
  auto parts = split(arange(7), 3);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[2].numel(), 1);
  EXPECT_EQ(chunk(arange(10), 3).size(), 3u);
  Tensor idx = from_vector<int64_t>({2, 0}, {2});
  EXPECT_EQ(index_select(a, 1, idx).str(), "tensor([[2., 0.],\n        [5., 3.]])");
  Tensor g = gather(a, 1, from_vector<int64_t>({1, 1, 0, 2}, {2, 2}));
  EXPECT_EQ(g.str(), "tensor([[1., 1.],\n        [3., 5.]])");
  EXPECT_THROW(index_select(a, 1, from_vector<int64_t>({3}, {1})), InvalidArgument);
  EXPECT_THROW(cat({a, ones({2, 2}, DType::kInt64)}, 0), InvalidArgument);
}

TEST(Tensor, ReductionsWithKeepdim) {
  Tensor a = arange(24, TensorOptions(DType::kFloat32)).view({2, 3, 4});
  EXPECT_EQ(sum(a, {1}, true).sizes(), (Shape{2, 1, 4}));
  EXPECT_EQ(sum(a, {0, 2}).sizes(), (Shape{3}));
  EXPECT_EQ(sum(a).item<float>(), 276.0f);
  EXPECT_EQ(mean(a, {-1}).select(0, 1).select(0, 2).item<float>(), 21.5f);
  auto [v, i] = max(a, 2);
  EXPECT_EQ(v.sizes(), (Shape{2, 3}));
  EXPECT_EQ(i.select(0, 0).select(0, 0).item<int64_t>(), 3);
  EXPECT_EQ(argmax(a).item<int64_t>(), 23);
  EXPECT_EQ(argmax(neg(a), 1, true).sizes(), (Shape{2, 1, 4}));
  EXPECT_NEAR(var(tensor({1, 2, 3, 4}), {0}).item<double>(), 1.6666667, 1e-6);
  EXPECT_NEAR(var(tensor({1, 2, 3, 4}), {0}, 0).item<double>(), 1.25, 1e-6);
  EXPECT_EQ(sum(zeros({0, 3}), {0}).str(), "tensor([0., 0., 0.])");
}

TEST(Tensor, PrintingIsReadable) {
  EXPECT_EQ(tensor({1.5, -2}).str(), "tensor([ 1.5000, -2.0000])");
  EXPECT_EQ(tensor({1, 2}, DType::kFloat64).str(), "tensor([1., 2.], dtype=float64)");
  EXPECT_EQ(from_vector<bool>({true, false}, {2}).str(), "tensor([ True, False])");
  EXPECT_EQ(scalar_tensor(3).str(), "tensor(3.)");
  EXPECT_EQ(scalar_tensor(0.25).str(), "tensor(0.2500)");
  EXPECT_EQ(zeros({0}).str(), "tensor([], dtype=float32, size=[0])");
  std::string big = zeros({2000}).str();
  EXPECT_NE(big.find("..."), std::string::npos);
  Tensor p = ones({2}).requires_grad_();
  EXPECT_NE(p.str().find("requires_grad=True"), std::string::npos);
  EXPECT_NE(mul(p, 2.0).str().find("grad_fn=<MulScalarBackward>"), std::string::npos);
}

// The 2x2/stride-2 pooling kernel works on eight outputs at once, with ragged row ends read past
// the row (or copied, at the tensor's end); check it against the definition, ties and NaN included.
TEST(Tensor, MaxPool2x2MatchesTheDefinition) {
  const int64_t P = 7, H = 10, W = 38;  // out_w 19: two full vectors and a ragged end
  Generator gen(3);
  Tensor x = randn({1, P, H, W}, {}, &gen);
  float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); i += 5) xp[i] = xp[i + 1];  // ties
  xp[2 * W + 5] = std::nanf("");
  x.set_requires_grad(true);
  Tensor y = max_pool2d(x, {{2, 2}, {2, 2}, {0, 0}});
  sum(y).backward();
  const float* yp = y.data_ptr<float>();
  const float* gp = x.grad().data_ptr<float>();
  std::vector<float> expect_grad(x.numel(), 0.0f);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t oh = 0; oh < H / 2; ++oh)
      for (int64_t ow = 0; ow < W / 2; ++ow) {
        int64_t best = -1;
        for (int64_t i : {0, 1})
          for (int64_t j : {0, 1}) {
            int64_t at = (p * H + 2 * oh + i) * W + 2 * ow + j;
            if (best < 0 || xp[at] > xp[best] || std::isnan(xp[at])) best = at;
          }
        const float got = yp[(p * H / 2 + oh) * (W / 2) + ow];
        if (std::isnan(xp[best])) {
          EXPECT_TRUE(std::isnan(got));
        } else {
          EXPECT_EQ(got, xp[best]) << "plane " << p << " at " << oh << "," << ow;
        }
        expect_grad[best] += 1.0f;
      }
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(gp[i], expect_grad[i]) << "element " << i;
}

// beta = 0 ignores what C held (NaN included) and leaves the columns past n (ldc > n) alone; the
// CPU backend clears C itself before OpenBLAS runs with beta = 1.
TEST(Tensor, GemmWithBetaZeroOverwritesOnlyC) {
  Tensor a = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector<float>({1, 0, 2, 1, 1, 0}, {3, 2});
  const float nan = std::nanf("");
  Tensor c = from_vector<float>({nan, nan, 7, nan, nan, 8}, {2, 3});  // ldc 3, n 2
  GemmArgs g;
  g.m = 2;
  g.n = 2;
  g.k = 3;
  g.lda = 3;
  g.ldb = 2;
  g.ldc = 3;
  g.beta = 0;
  backend_for(Device::cpu()).gemm(g, a, b, c);
  const float* cp = c.data_ptr<float>();
  const std::vector<float> expect{1 + 2 * 2 + 3 * 1, 1 * 0 + 2 * 1 + 0, 7,
                                  4 + 5 * 2 + 6 * 1, 0 + 5 * 1 + 0,     8};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(cp[i], expect[static_cast<size_t>(i)]) << i;
}

TEST(Tensor, Conv2dChoosesWinogradOnlyWhereItApplies) {
  auto algo = [](const Shape& x, const Shape& w, Conv2dOptions o, DType dt = DType::kFloat32) {
    return conv2d_algorithm(empty(x, TensorOptions(dt)), empty(w, TensorOptions(dt)), o);
  };
  const Conv2dOptions pad1{{1, 1}, {1, 1}, {1, 1}, 1};
  EXPECT_EQ(algo({8, 32, 14, 14}, {64, 32, 3, 3}, pad1), Conv2dAlgorithm::kWinograd);
  EXPECT_EQ(algo({8, 1, 28, 28}, {32, 1, 3, 3}, pad1), Conv2dAlgorithm::kIm2col);  // 1 channel
  EXPECT_EQ(algo({8, 32, 14, 14}, {64, 32, 3, 3}, pad1, DType::kFloat64), Conv2dAlgorithm::kIm2col);
  EXPECT_EQ(algo({8, 32, 14, 14}, {64, 32, 3, 3}, {{2, 2}, {1, 1}, {1, 1}, 1}),
            Conv2dAlgorithm::kIm2col);
  EXPECT_EQ(algo({8, 32, 14, 14}, {64, 32, 5, 5}, pad1), Conv2dAlgorithm::kIm2col);
  Conv2dOptions forced = pad1;
  forced.algorithm = Conv2dAlgorithm::kIm2col;
  EXPECT_EQ(algo({8, 32, 14, 14}, {64, 32, 3, 3}, forced), Conv2dAlgorithm::kIm2col);
  forced.algorithm = Conv2dAlgorithm::kWinograd;
  forced.dilation = {2, 2};
  try {
    algo({8, 32, 14, 14}, {64, 32, 3, 3}, forced);
    FAIL() << "a dilated Winograd convolution was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("Winograd algorithm needs dilation 1"), std::string::npos)
        << e.what();
  }
}

// An empty batch gives an empty output and zero weight and bias gradients, whichever algorithm.
TEST(Tensor, Conv2dOfAnEmptyBatch) {
  for (Conv2dAlgorithm a : {Conv2dAlgorithm::kIm2col, Conv2dAlgorithm::kWinograd}) {
    Tensor x = zeros({0, 16, 7, 7}), w = ones({16, 16, 3, 3}), b = ones({16});
    for (Tensor* t : {&x, &w, &b}) t->set_requires_grad(true);
    Tensor y = conv2d(x, w, b, {{1, 1}, {1, 1}, {1, 1}, 1, a});
    EXPECT_EQ(y.sizes(), (Shape{0, 16, 7, 7}));
    sum(y).backward();
    EXPECT_EQ(x.grad().sizes(), (Shape{0, 16, 7, 7}));
    EXPECT_EQ(max(abs(w.grad())).item_double(), 0.0);
    EXPECT_EQ(max(abs(b.grad())).item_double(), 0.0);
  }
}

// A batch large enough for several Winograd passes (2048 tiles each; 49 per 13x14 image), in
// float64 so that both algorithms agree to rounding: values and all three gradients.
TEST(Tensor, Conv2dWinogradOverSeveralPassesEqualsIm2col) {
  Generator gen(5);
  const TensorOptions f64(DType::kFloat64);
  Tensor x0 = randn({100, 3, 13, 14}, f64, &gen), w0 = randn({5, 3, 3, 3}, f64, &gen);
  Tensor b0 = randn({5}, f64, &gen), gy = randn({100, 5, 13, 14}, f64, &gen);
  auto run = [&](Conv2dAlgorithm a) {
    Tensor x = x0.clone(), w = w0.clone(), b = b0.clone();
    for (Tensor* t : {&x, &w, &b}) t->set_requires_grad(true);
    Tensor y = conv2d(x, w, b, {{1, 1}, {1, 1}, {1, 1}, 1, a});
    y.backward(gy);
    return std::vector<Tensor>{y.detach(), x.grad(), w.grad(), b.grad()};
  };
  auto wino = run(Conv2dAlgorithm::kWinograd), ref = run(Conv2dAlgorithm::kIm2col);
  const char* names[] = {"output", "input grad", "weight grad", "bias grad"};
  for (int i = 0; i < 4; ++i) {
    const double err = max(abs(sub(wino[i], ref[i]))).item_double();
    const double scale = max(abs(ref[i])).item_double();
    EXPECT_LT(err, 1e-12 * scale) << names[i];
  }
}

// The CNN's second convolution in float32, which kAuto runs with Winograd: its extra rounding
// stays far below what training notices (measured: under 1e-6 of the largest value).
TEST(Tensor, Conv2dWinogradFloat32IsCloseToIm2col) {
  Generator gen(6);
  Tensor x0 = randn({4, 32, 14, 14}, {}, &gen), w0 = mul(randn({64, 32, 3, 3}, {}, &gen), 0.06);
  Tensor gy = randn({4, 64, 14, 14}, {}, &gen);
  auto run = [&](Conv2dAlgorithm a) {
    Tensor x = x0.clone(), w = w0.clone();
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    Tensor y = conv2d(x, w, Tensor(), {{1, 1}, {1, 1}, {1, 1}, 1, a});
    y.backward(gy);
    return std::vector<Tensor>{y.detach(), x.grad(), w.grad()};
  };
  ASSERT_EQ(conv2d_algorithm(x0, w0, {{1, 1}, {1, 1}, {1, 1}, 1}), Conv2dAlgorithm::kWinograd);
  auto wino = run(Conv2dAlgorithm::kAuto), ref = run(Conv2dAlgorithm::kIm2col);
  const char* names[] = {"output", "input grad", "weight grad"};
  for (int i = 0; i < 3; ++i) {
    const double err = max(abs(sub(wino[i], ref[i]))).item_double();
    const double scale = max(abs(ref[i])).item_double();
    std::printf("%s: max error %.3g of %.3g\n", names[i], err, scale);
    EXPECT_LT(err, 1e-5 * scale) << names[i];
  }
}

}  // namespace
}  // namespace cohort::core
