// The CUDA backend: our kernels, cuBLAS for GEMM and cuDNN for convolutions. Every kernel runs on
// the stream of its device (cuda::current_stream), so work is ordered without host waits.
#pragma once

#include "core/ops/backend.h"

namespace cohort::core::cuda {

class CudaBackend final : public Backend {
 public:
  bool adamw_step(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
                  const AdamWStep& a) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double value) override;
  void unary(UnaryOp op, const Tensor& in, const Tensor& out, Scalars s) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out, Scalars s) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void reduce(ReduceOp op, const Tensor& in, const Tensor& out, const Tensor& indices,
              int64_t dim) override;
  void gemm(const GemmArgs& g, const Tensor& a, const Tensor& b, const Tensor& c) override;
  void softmax(const Tensor& in, const Tensor& out, bool log) override;
  void softmax_backward(const Tensor& grad, const Tensor& out, const Tensor& grad_in,
                        bool log) override;
  void attention_softmax(const Tensor& scores, bool causal, const Tensor& probs) override;
  void attention_softmax_backward(const Tensor& grad_probs, const Tensor& probs, bool causal,
                                  double scale, const Tensor& grad_scores) override;
  void cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                     double label_smoothing, const Tensor& loss_rows) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                              double label_smoothing, const Tensor& row_scale,
                              const Tensor& grad_logits) override;
  void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                  const Tensor& out, const Tensor& mean, const Tensor& rstd) override;
  void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                           const Tensor& mean, const Tensor& rstd, const Tensor& grad_x,
                           const Tensor& grad_w, const Tensor& grad_b) override;
  void index_select(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) override;
  void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  void gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) override;
  void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) override;
  bool has_conv2d(DType dtype) const override;
  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dGeometry& g,
                      const Tensor& y) override;
  void conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dGeometry& g,
                       const Tensor& gx, const Tensor& gw, const Tensor& gb) override;
  void im2col(const Tensor& image, const Conv2dGeometry& g, int64_t n, const Tensor& col) override;
  void col2im(const Tensor& col, const Conv2dGeometry& g, int64_t n, const Tensor& image) override;
  void winograd_input(const Tensor& x, const Conv2dGeometry& g, const Tensor& v) override;
  void winograd_input_backward(const Tensor& v, const Conv2dGeometry& g, const Tensor& x) override;
  void winograd_output(const Tensor& m, const Tensor& bias, const Conv2dGeometry& g,
                       const Tensor& y) override;
  void winograd_output_backward(const Tensor& dy, const Conv2dGeometry& g,
                                const Tensor& m) override;
  void max_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out,
                  const Tensor& indices) override;
  void max_pool2d_backward(const Tensor& grad, const Tensor& indices, const Pool2dGeometry& g,
                           const Tensor& grad_in) override;
  void avg_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out) override;
  void avg_pool2d_backward(const Tensor& grad, const Pool2dGeometry& g,
                           const Tensor& grad_in) override;
};

}  // namespace cohort::core::cuda
