// DDP's gradient compression (collectives/ddp/comm_hook.h) on threads standing in for ranks:
// 16-bit buckets against the exact average within a bound derived from the dtype's rounding, and
// PowerSGD's algebra (exact on low-rank gradients, the error it carries, equal replicas).
#include <gtest/gtest.h>

#include <cmath>
#include <mutex>

#include "collectives/ddp/comm_hook.h"
#include "collectives/ddp/ddp.h"
#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/optim/optimizer.h"
#include "ddp_test_util.h"

namespace cohort::collectives {
namespace {

using namespace ddp_testing;
using core::DType;
using core::Tensor;

Tensor to64(const Tensor& t) { return t.contiguous().to(DType::kFloat64); }

// Every rank's tensor in float64, summed exactly enough (float64 all-reduce of float32 values).
Tensor sum64(ProcessGroup& pg, const Tensor& t) {
  Tensor s = to64(t).clone();
  pg.allreduce(s)->wait();
  return s;
}

// Unit roundoff of the 16-bit formats (8 and 11 significant bits), and half of fp16's smallest
// subnormal (the absolute error of rounding a value that small).
double unit_roundoff(Compression c) { return c == Compression::kBFloat16 ? 0x1p-8 : 0x1p-11; }
double absolute_floor(Compression c) { return c == Compression::kBFloat16 ? 0 : 0x1p-25; }

struct HalfCase {
  Compression kind;
  bool reduce_scatter, free_gradients;
};

class HalfCompression : public ::testing::TestWithParam<HalfCase> {};

// Each step's averaged gradient against the exact average of the ranks' local gradients: the
// hook divides each x_i by W and rounds (error <= u |x_i| / W), then the ring adds W - 1 times,
// rounding each partial sum (each <= u sum_j |x_j| / W), so |result - mean| <= u sum_i |x_i| (+ an
// absolute floor per rounding where fp16 goes subnormal). After 20 SGD steps the parameters differ
// from plain DDP's by the steps' rounding carried through the updates: at most the sum of
// lr * bound over the steps, times a small growth factor for lr 0.01 (x4 here). The 16-bit run
// must also differ from the plain one (the compression ran) and leave every replica identical.
TEST_P(HalfCompression, EqualsPlainDdpWithinTheDtypesRounding) {
  const HalfCase hc = GetParam();
  const int world = 3, steps = 20;
  const int64_t per_rank = 6;
  const double lr = 0.01;
  Data all = make_data(per_rank * world);
  std::vector<std::vector<Tensor>> final_params(2 * world);
  std::vector<double> drift_bound(world, 0);
  for (bool compress : {false, true})
    run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
      auto model = make_mlp(0);
      auto params = model->parameters();
      // Registered before DDP's hooks: each rank's local gradient as backward delivers it.
      std::vector<Tensor> local(params.size());
      for (size_t i = 0; i < params.size(); ++i)
        params[i].register_post_accumulate_grad_hook(
            [&local, i](Tensor& p) { local[i] = to64(p.grad()).clone(); });
      DdpOptions o = small_buckets();
      o.reduce_scatter = hc.reduce_scatter;
      o.free_gradients = hc.free_gradients;
      if (compress) o.compression.kind = hc.kind;
      DistributedDataParallel ddp(model, pg, o);
      const int rank = pg->rank();
      Data mine = rows(all, per_rank * rank, per_rank);
      for (int step = 0; step < steps; ++step) {
        model->zero_grad();
        ddp.zero_shards();
        core::cross_entropy(ddp.forward(mine.x), mine.y).backward();
        core::autograd::NoGradGuard guard;
        // The averaged gradient each parameter got: whole, or this rank's shard of its bucket.
        double step_bound = 0;
        for (size_t i = 0; i < params.size(); ++i) {
          const Tensor mean = core::div(sum64(*pg, local[i]), world).view({-1});
          const Tensor abs_sum = sum64(*pg, core::abs(local[i])).view({-1});
          const auto& slot = ddp.slots()[i];
          const auto& bucket = ddp.buckets()[slot.bucket];
          Tensor got;
          int64_t begin = 0;
          if (!hc.reduce_scatter) {
            got = to64(params[i].grad()).view({-1});
          } else {
            // This rank's shard of the bucket, where it overlaps the parameter.
            const int64_t n = bucket.padded / world, lo = n * rank, hi = lo + n;
            const int64_t pb = slot.offset, pe = slot.offset + params[i].numel();
            if (std::max(lo, pb) >= std::min(hi, pe)) continue;
            begin = std::max(lo, pb) - pb;
            got = to64(
                bucket.shard.narrow(0, std::max(lo, pb) - lo, std::min(hi, pe) - std::max(lo, pb)));
          }
          const double* g = got.data_ptr<double>();
          const double* m = mean.data_ptr<double>() + begin;
          const double* a = abs_sum.data_ptr<double>() + begin;
          for (int64_t k = 0; k < got.numel(); ++k) {
            const double bound = compress ? unit_roundoff(hc.kind) * a[k] * 1.01 +
                                                world * absolute_floor(hc.kind) + 1e-7 * a[k]
                                          : 1e-6 * a[k] + 1e-12;
            ASSERT_LE(std::abs(g[k] - m[k]), bound)
                << ddp.param_names()[i] << " element " << begin + k << " step " << step;
            step_bound = std::max(step_bound, bound);
          }
        }
        if (compress) drift_bound[rank] += lr * step_bound;
        // SGD by hand, on whole gradients (ddp) or on this rank's shards, gathered back (zero).
        if (!hc.reduce_scatter) {
          for (Tensor& p : params) core::add_(p, p.grad(), -lr);
        } else {
          for (const auto& b : ddp.buckets()) {
            Tensor full = core::zeros({b.padded});
            const int64_t n = b.padded / world;
            full.narrow(0, n * rank, n).copy_(b.shard);
            pg->allreduce(full)->wait();
            for (size_t k : b.params) {
              Tensor p = params[k];
              core::add_(p, full.narrow(0, ddp.slots()[k].offset, p.numel()).view(p.sizes()), -lr);
            }
          }
        }
      }
      for (const Tensor& p : params)
        final_params[(compress ? world : 0) + rank].push_back(p.clone());
    });
  for (int r = 0; r < world; ++r)
    for (size_t i = 0; i < final_params[0].size(); ++i) {
      const Tensor plain = to64(final_params[r][i]), half = to64(final_params[world + r][i]);
      const Tensor first = to64(final_params[world][i]);
      const double diff = core::max(core::abs(core::sub(half, plain))).item<double>();
      EXPECT_LE(diff, 4 * drift_bound[r]) << "rank " << r << " parameter " << i;
      EXPECT_EQ(core::max(core::abs(core::sub(half, first))).item<double>(), 0)
          << "rank " << r << " parameter " << i << " differs from rank 0's";
      if (i == 0) {
        EXPECT_GT(diff, 0) << "the compressed run equals the plain one exactly";
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Modes, HalfCompression,
                         ::testing::Values(HalfCase{Compression::kBFloat16, false, false},
                                           HalfCase{Compression::kFloat16, false, false},
                                           HalfCase{Compression::kBFloat16, true, false},
                                           HalfCase{Compression::kFloat16, true, true}),
                         [](const auto& info) {
                           return std::string(compression_name(info.param.kind)) +
                                  (info.param.free_gradients   ? "_zero2"
                                   : info.param.reduce_scatter ? "_zero1"
                                                               : "_ddp");
                         });

// Runs a PowerSGD hook over one bucket holding a matrix `rows x cols` and a vector, driving each
// stage to its end; returns the bucket after the reduction.
Tensor run_hook(CommHook& hook, Tensor grads) {
  Reduction r = hook.start(0, grads, false);
  while (r.work) {
    r.work->wait();
    auto then = std::move(r.then);
    r = then ? then() : Reduction{};
  }
  hook.end_backward();
  return grads;
}

std::vector<HookBucket> one_bucket(int64_t rows, int64_t cols, int64_t vec) {
  HookBucket b;
  b.slots.push_back({"w", {rows, cols}, 0});
  b.slots.push_back({"b", {vec}, rows * cols});
  b.numel = rows * cols + vec;
  return {b};
}

// On gradients that are all rank 1 with one shared column space (M_i = u v_i^T), the average is
// rank 1 too and a rank-1 PowerSGD gives it exactly (float64, up to rounding); the vector goes
// uncompressed; every rank gets the same bits.
TEST(PowerSgd, IsExactOnRankOneGradientsAndEqualOnEveryRank) {
  const int world = 3;
  const int64_t n = 12, m = 20, v = 5;
  std::mutex mu;
  std::vector<Tensor> results(world);
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    PowerSgdOptions o;
    o.rank = 1;
    o.start_step = 0;
    auto hook = make_comm_hook({Compression::kPowerSgd, o}, *pg, one_bucket(n, m, v), 60s);
    const int r = pg->rank();
    core::Generator gen(7);
    const Tensor u = core::randn({n, 1}, core::TensorOptions(DType::kFloat64), &gen);
    core::Generator mine(100 + r);
    const Tensor vr = core::randn({1, m}, core::TensorOptions(DType::kFloat64), &mine);
    const Tensor vec = core::randn({v}, core::TensorOptions(DType::kFloat64), &mine);
    Tensor grads = core::cat({core::matmul(u, vr).view({-1}), vec});
    const Tensor exact = core::div(sum64(*pg, grads), world);
    Tensor got = run_hook(*hook, grads.clone());
    const double scale = core::max(core::abs(exact)).item<double>();
    EXPECT_LE(core::max(core::abs(core::sub(got, exact))).item<double>(), 1e-12 * scale);
    // The vector part went as it was: exact to float64's sum.
    EXPECT_LE(core::max(core::abs(core::sub(got.narrow(0, n * m, v), exact.narrow(0, n * m, v))))
                  .item<double>(),
              1e-15 * scale);
    std::lock_guard<std::mutex> lock(mu);
    results[r] = got;
  });
  for (int r = 1; r < world; ++r)
    EXPECT_EQ(core::max(core::abs(core::sub(results[r], results[0]))).item<double>(), 0)
        << "rank " << r;
}

// On full-rank gradients a rank-1 approximation misses part of the average; error feedback keeps
// it: the applied average plus the ranks' mean error is exactly the true average (M_i = applied +
// e_i on every rank), and the next step adds each rank's error to its gradient. Without error
// feedback nothing is kept. Before start_step the reduction is a plain all-reduce.
TEST(PowerSgd, ErrorFeedbackKeepsWhatTheApproximationMissed) {
  const int world = 2;
  const int64_t n = 16, m = 24;
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    PowerSgdOptions o;
    o.rank = 1;
    o.start_step = 1;
    auto hook = make_comm_hook({Compression::kPowerSgd, o}, *pg, one_bucket(n, m, 1), 60s);
    const auto opts = core::TensorOptions(DType::kFloat64);
    core::Generator gen(200 + pg->rank());
    // Step 0: plain average.
    Tensor g0 = core::randn({n * m + 1}, opts, &gen);
    const Tensor exact0 = core::div(sum64(*pg, g0), world);
    EXPECT_LE(core::max(core::abs(core::sub(run_hook(*hook, g0.clone()), exact0))).item<double>(),
              1e-15);
    // Step 1: compressed.
    Tensor g1 = core::randn({n * m + 1}, opts, &gen);
    const Tensor exact1 = core::div(sum64(*pg, g1), world);
    Tensor applied = run_hook(*hook, g1.clone());
    std::map<std::string, Tensor> shared, own;
    hook->state(shared, own);
    ASSERT_TRUE(own.count("powersgd.error.w"));
    ASSERT_TRUE(shared.count("powersgd.q.w"));
    EXPECT_EQ(shared.at("powersgd.steps").item<int64_t>(), 2);
    const Tensor err = own.at("powersgd.error.w").view({-1});
    // Rank 1 of a full-rank matrix: something was missed.
    EXPECT_GT(core::max(core::abs(err)).item<double>(), 1e-3);
    // This rank's gradient is what was applied plus its error.
    EXPECT_LE(core::max(core::abs(core::sub(g1.narrow(0, 0, n * m),
                                            core::add(applied.narrow(0, 0, n * m), err))))
                  .item<double>(),
              1e-12);
    // Hence the mean over ranks: applied + mean error == the exact average.
    const Tensor mean_err = core::div(sum64(*pg, err), world);
    EXPECT_LE(core::max(core::abs(core::sub(exact1.narrow(0, 0, n * m),
                                            core::add(applied.narrow(0, 0, n * m), mean_err))))
                  .item<double>(),
              1e-12);
    // A hook loaded from this state continues exactly as this one does.
    auto twin = make_comm_hook({Compression::kPowerSgd, o}, *pg, one_bucket(n, m, 1), 60s);
    twin->load_state(shared, own);
    Tensor g2 = core::randn({n * m + 1}, opts, &gen);
    const Tensor a = run_hook(*hook, g2.clone()), b = run_hook(*twin, g2.clone());
    EXPECT_EQ(core::max(core::abs(core::sub(a, b))).item<double>(), 0);
    // Without error feedback no error is kept.
    PowerSgdOptions plain = o;
    plain.error_feedback = false;
    plain.start_step = 0;
    auto forgetful = make_comm_hook({Compression::kPowerSgd, plain}, *pg, one_bucket(n, m, 1), 60s);
    run_hook(*forgetful, g1.clone());
    shared.clear();
    own.clear();
    forgetful->state(shared, own);
    EXPECT_TRUE(own.empty());
  });
}

// DDP with PowerSGD on the little MLP: every rank ends each step with the same gradient, the
// matrices compressed and the biases exact.
TEST(PowerSgd, UnderDdpEveryReplicaGetsTheSameGradient) {
  const int world = 3;
  Data all = make_data(5 * world);
  std::mutex mu;
  std::vector<std::vector<Tensor>> grads(world);
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(0);
    DdpOptions o = small_buckets();
    o.compression.kind = Compression::kPowerSgd;
    o.compression.powersgd.rank = 2;
    o.compression.powersgd.start_step = 0;
    o.compression.powersgd.min_compression_rate = 1;
    DistributedDataParallel ddp(model, pg, o);
    Data mine = rows(all, 5 * pg->rank(), 5);
    for (int step = 0; step < 3; ++step) {
      model->zero_grad();
      core::cross_entropy(ddp.forward(mine.x), mine.y).backward();
    }
    EXPECT_NE(ddp.comm_hook()->describe().find("tensors compressed"), std::string::npos);
    std::lock_guard<std::mutex> lock(mu);
    for (const Tensor& p : model->parameters()) grads[pg->rank()].push_back(p.grad().clone());
  });
  for (int r = 1; r < world; ++r)
    for (size_t i = 0; i < grads[0].size(); ++i)
      EXPECT_EQ(core::max(core::abs(core::sub(grads[r][i], grads[0][i]))).item<float>(), 0)
          << "rank " << r << " parameter " << i;
}

TEST(PowerSgd, OptionsOutOfRangeAndZeroAreConfigErrors) {
  run_ranks(1, [&](std::shared_ptr<ProcessGroup> pg) {
    PowerSgdOptions o;
    o.rank = 0;
    EXPECT_THROW(make_comm_hook({Compression::kPowerSgd, o}, *pg, one_bucket(4, 4, 1), 60s),
                 ConfigError);
    EXPECT_THROW(parse_compression("int8"), ConfigError);
    auto model = make_mlp(0);
    DdpOptions d;
    d.reduce_scatter = true;
    d.compression.kind = Compression::kPowerSgd;
    EXPECT_THROW(DistributedDataParallel(model, pg, d), ConfigError);
  });
}

}  // namespace
}  // namespace cohort::collectives
