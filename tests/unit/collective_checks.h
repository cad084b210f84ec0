// Closed-form checks of every collective, shared by the backends' tests: each rank's input is
// small integers (exact in every dtype, bfloat16 included), so every result has an exact value.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "core/ops/ops.h"

namespace cohort::collectives {

using core::DType;
using core::Tensor;

// Element i of rank r's input: small integers, exact in every dtype including bfloat16.
inline double value(int r, int64_t i) { return (r + 1) + (i % 7); }
inline double product_value(int r, int64_t i) { return ((r + i) % 2 == 0) ? 2 : 1; }

inline Tensor filled(int64_t n, DType dt, const std::function<double(int64_t)>& f) {
  Tensor t = core::empty({n}, core::TensorOptions(DType::kFloat64));
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = f(i);
  return t.to(dt);
}

// Compares t (any dtype) with f(i) exactly; reports the first mismatch.
inline void expect_values(const Tensor& t, const std::function<double(int64_t)>& f,
                          const std::string& what) {
  Tensor d = t.to(core::Device::cpu()).to(DType::kFloat64);
  const double* p = d.data_ptr<double>();
  for (int64_t i = 0; i < d.numel(); ++i)
    if (p[i] != f(i)) {
      ADD_FAILURE() << what << ": element " << i << " is " << p[i] << ", expected " << f(i);
      return;
    }
}

inline const std::vector<DType> kDtypes = {DType::kFloat32,  DType::kFloat64, DType::kFloat16,
                                           DType::kBFloat16, DType::kInt32,   DType::kInt64};

// Tensors live on `device` (CUDA for the nccl backend); values are made and checked on the host.
inline void every_collective(ProcessGroup& pg, const std::vector<int64_t>& counts,
                             core::Device device = core::Device::cpu()) {
  auto filled = [device](int64_t n, DType dt, const std::function<double(int64_t)>& f) {
    return cohort::collectives::filled(n, dt, f).to(device);
  };
  auto empty = [device](int64_t n, DType dt) {
    return core::empty({n}, core::TensorOptions(dt).with_device(device));
  };
  const int W = pg.size(), r = pg.rank();
  for (int64_t n : counts)
    for (DType dt : kDtypes) {
      const std::string at = std::string(core::dtype_name(dt)) + " n=" + std::to_string(n) +
                             " world=" + std::to_string(W) + " rank=" + std::to_string(r);
      const bool floating = dt != DType::kInt32 && dt != DType::kInt64;
      for (ReduceOp op :
           {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kProduct, ReduceOp::kMin, ReduceOp::kMax}) {
        if (op == ReduceOp::kAvg && !floating) continue;
        Tensor t = op == ReduceOp::kProduct
                       ? filled(n, dt, [&](int64_t i) { return product_value(r, i); })
                       : filled(n, dt, [&](int64_t i) { return value(r, i); });
        pg.allreduce(t, {op})->wait();
        expect_values(
            t,
            [&](int64_t i) {
              switch (op) {
                case ReduceOp::kSum:
                  return W * (W + 1) / 2.0 + W * (i % 7);
                case ReduceOp::kAvg:
                  return (W + 1) / 2.0 + (i % 7);
                case ReduceOp::kProduct: {
                  double p = 1;
                  for (int q = 0; q < W; ++q) p *= product_value(q, i);
                  return p;
                }
                case ReduceOp::kMin:
                  return 1.0 + (i % 7);
                case ReduceOp::kMax:
                  return W + static_cast<double>(i % 7);
              }
              return 0.0;
            },
            "allreduce " + std::string(reduce_op_name(op)) + " " + at);
      }
      for (int root : {0, W - 1}) {
        Tensor b = filled(n, dt, [&](int64_t i) { return value(r, i); });
        pg.broadcast(b, {root})->wait();
        expect_values(
            b, [&](int64_t i) { return value(root, i); }, "broadcast " + at);
        Tensor red = filled(n, dt, [&](int64_t i) { return value(r, i); });
        pg.reduce(red, {ReduceOp::kSum, root})->wait();
        if (r == root)
          expect_values(
              red, [&](int64_t i) { return W * (W + 1) / 2.0 + W * (i % 7); }, "reduce " + at);
      }
      // Element i of an all-gather's output: rank i / n's value at i % n.
      auto gathered_value = [&](int64_t i) {
        return value(static_cast<int>(i / std::max<int64_t>(n, 1)), i % std::max<int64_t>(n, 1));
      };
      Tensor in = filled(n, dt, [&](int64_t i) { return value(r, i); });
      Tensor gathered = empty(n * W, dt);
      pg.allgather(gathered, in)->wait();
      expect_values(gathered, gathered_value, "allgather " + at);
      // reduce_scatter: rank q's input block b holds value(q, b*n + i).
      Tensor rs_in = filled(n * W, dt, [&](int64_t i) { return value(r, i); });
      Tensor rs_out = empty(n, dt);
      pg.reduce_scatter(rs_out, rs_in, {ReduceOp::kSum})->wait();
      expect_values(
          rs_out, [&](int64_t i) { return W * (W + 1) / 2.0 + W * ((r * n + i) % 7); },
          "reduce_scatter " + at);
      // In place (NCCL's convention: output is block `rank` of the input), and averaged there,
      // the way the sharded optimiser's buckets reduce.
      if (floating) {
        Tensor rs_buf = filled(n * W, dt, [&](int64_t i) { return value(r, i); });
        Tensor rs_mine = rs_buf.narrow(0, n * r, n);
        pg.reduce_scatter(rs_mine, rs_buf, {ReduceOp::kAvg})->wait();
        expect_values(
            rs_mine, [&](int64_t i) { return (W + 1) / 2.0 + (r * n + i) % 7; },
            "in-place reduce_scatter avg " + at);
      }
      Tensor ag_buf = filled(n * W, dt, [&](int64_t i) {
        return i / std::max<int64_t>(n, 1) == r ? value(r, i % std::max<int64_t>(n, 1)) : -1;
      });
      Tensor ag_mine = ag_buf.narrow(0, n * r, n);
      pg.allgather(ag_buf, ag_mine)->wait();
      expect_values(ag_buf, gathered_value, "in-place allgather " + at);
      // alltoall: block b of rank q's input is q * 100 + b + i % 7... kept small for bfloat16.
      Tensor a_in =
          filled(n * W, dt, [&](int64_t i) { return r * 10 + i / std::max<int64_t>(n, 1); });
      Tensor a_out = empty(n * W, dt);
      pg.alltoall(a_out, a_in)->wait();
      expect_values(
          a_out, [&](int64_t i) { return (i / std::max<int64_t>(n, 1)) * 10.0 + r; },
          "alltoall " + at);
    }
  pg.barrier()->wait();
}

}  // namespace cohort::collectives
