// The kernel interface each device implements. Op front ends (core/ops/*.cc) validate arguments,
// allocate outputs, record autograd and call the backend of the tensors' device; kernels see only
// checked shapes. The CPU backend lives in core/ops/cpu/, the CUDA one in core/ops/cuda/.
#pragma once

#include <cstdint>
#include <limits>

#include "core/tensor/tensor.h"

namespace cohort::core {

enum class UnaryOp : uint8_t {
  kNeg,
  kExp,
  kLog,
  kSqrt,
  kRsqrt,
  kAbs,
  kSign,
  kRelu,
  kGeluTanh,
  kGeluErf,
  kTanh,
  kSigmoid,
  kSilu,
  kSquare,
  kReciprocal,
  kClamp,      // clamp(x, s.a, s.b)
  kPowScalar,  // x ** s.a
  kAffine,     // x * s.a + s.b
  kNot,        // logical not (bool out)
};

enum class BinaryOp : uint8_t {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kPow,
  kMaximum,
  kMinimum,
  kEq,
  kNe,
  kLt,
  kLe,
  kGt,
  kGe,  // bool out
  kAnd,
  kOr,  // bool inputs, bool out
  // Fused backward kernels: a is the incoming gradient, b the saved input (x) or output (y).
  kReluGrad,       // a * (x > 0)
  kGeluTanhGrad,   // a * gelu_tanh'(x)
  kGeluErfGrad,    // a * gelu_erf'(x)
  kTanhGrad,       // a * (1 - y^2)
  kSigmoidGrad,    // a * y * (1 - y)
  kSiluGrad,       // a * silu'(x)
  kClampGrad,      // a * (s.a <= x <= s.b)
  kPowScalarGrad,  // a * s.a * x^(s.a - 1)
};

enum class ReduceOp : uint8_t { kSum, kProd, kMax, kMin };

// The value a reduction over elements of type T starts from, in accumulator type Acc (both
// backends): max and min start from -inf/+inf where T has them, else from T's range bounds.
template <typename T, typename Acc>
Acc reduce_identity(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return Acc(0);
    case ReduceOp::kProd:
      return Acc(1);
    case ReduceOp::kMax:
      return std::numeric_limits<T>::has_infinity
                 ? -static_cast<Acc>(std::numeric_limits<T>::infinity())
                 : static_cast<Acc>(std::numeric_limits<T>::lowest());
    case ReduceOp::kMin:
      return std::numeric_limits<T>::has_infinity
                 ? static_cast<Acc>(std::numeric_limits<T>::infinity())
                 : static_cast<Acc>(std::numeric_limits<T>::max());
  }
  return Acc(0);
}

struct Scalars {
  double a = 0;
  double b = 0;
};

// Strided GEMM on one device: C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b] for b in batch.
// A is m×k (k×m when trans_a), B k×n (n×k when trans_b), C m×n, leading dimensions in elements.
struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  double alpha = 1, beta = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
};

struct Conv2dGeometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
  int64_t out_h, out_w;
};

struct Pool2dGeometry {
  int64_t planes, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, out_h, out_w;
  bool count_include_pad = true;
};

// One AdamW update's constants (PyTorch's formula): p *= 1 - lr wd; m = lerp(m, g, 1 - beta1);
// v = beta2 v + (1 - beta2) g^2; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
struct AdamWStep {
  double lr, beta1, beta2, eps, weight_decay, bc1, bc2;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // The whole AdamW update of one parameter in one pass, where the device has a fused kernel
  // for it (contiguous float32 p, g, m, v); false: the optimiser runs it op by op.
  virtual bool adamw_step(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const AdamWStep&) {
    return false;
  }

  // dst = src (converted to dst's dtype); src is broadcastable to dst's shape. Any strides.
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill(const Tensor& dst, double value) = 0;
  // out = op(in); `in` broadcastable to out. in and out share a dtype except for bool results.
  virtual void unary(UnaryOp op, const Tensor& in, const Tensor& out, Scalars s) = 0;
  // out = op(a, b); a and b broadcastable to out and of one dtype.
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out,
                      Scalars s) = 0;
  // out = cond ? a : b; all broadcastable to out.
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out has in's rank with size 1 in the reduced dims. For kMax/kMin over one dim, `indices`
  // (int64, out's shape) receives the position of the first extreme value when defined.
  virtual void reduce(ReduceOp op, const Tensor& in, const Tensor& out, const Tensor& indices,
                      int64_t dim) = 0;
  // C = alpha op(A) op(B) + beta C on contiguous-enough operands (see GemmArgs).
  virtual void gemm(const GemmArgs& g, const Tensor& a, const Tensor& b, const Tensor& c) = 0;

  // Row-wise over the last dim of contiguous [rows, cols] tensors.
  virtual void softmax(const Tensor& in, const Tensor& out, bool log) = 0;
  virtual void softmax_backward(const Tensor& grad, const Tensor& out, const Tensor& grad_in,
                                bool log) = 0;
  // Attention probabilities: a softmax over the last dim of contiguous scores [matrices, lq, lk]
  // (already scaled). With causal, key j > query i is masked: probability exactly 0.
  virtual void attention_softmax(const Tensor& scores, bool causal, const Tensor& probs) = 0;
  // grad_scores = scale * probs * (grad_probs - sum_j grad_probs * probs), 0 where masked: the
  // gradient of the unscaled scores q k^T.
  virtual void attention_softmax_backward(const Tensor& grad_probs, const Tensor& probs,
                                          bool causal, double scale, const Tensor& grad_scores) = 0;
  // Fused log_softmax + NLL over contiguous logits [rows, classes] and int64 targets [rows].
  // Writes per-row losses and, when defined, the gradient w.r.t. logits scaled by row_scale[rows].
  virtual void cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index,
                             double label_smoothing, const Tensor& loss_rows) = 0;
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& target,
                                      int64_t ignore_index, double label_smoothing,
                                      const Tensor& row_scale, const Tensor& grad_logits) = 0;
  // Layer norm over the last dim of contiguous [rows, cols]; mean/rstd are float [rows].
  virtual void layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                          const Tensor& out, const Tensor& mean, const Tensor& rstd) = 0;
  virtual void layer_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                   const Tensor& mean, const Tensor& rstd, const Tensor& grad_x,
                                   const Tensor& grad_w, const Tensor& grad_b) = 0;

  // out[..., i, ...] = in[..., index[i], ...] along dim (contiguous in/out, int64 index).
  virtual void index_select(const Tensor& in, int64_t dim, const Tensor& index,
                            const Tensor& out) = 0;
  // out[..., index[i], ...] += src[..., i, ...] along dim.
  virtual void index_add(const Tensor& out, int64_t dim, const Tensor& index,
                         const Tensor& src) = 0;
  // out = in.gather(dim, index); index has out's shape.
  virtual void gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) = 0;
  // out.scatter_add_(dim, index, src).
  virtual void scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                           const Tensor& src) = 0;

  // Whole convolutions in a vendor library (cuDNN) on contiguous NCHW tensors, where the device
  // has one for `dtype`; otherwise conv2d runs im2col + GEMM (or Winograd) through the kernels
  // below. conv2d_backward skips the gradients that are not defined.
  virtual bool has_conv2d(DType) const { return false; }
  virtual void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                              const Conv2dGeometry& g, const Tensor& y);
  virtual void conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                               const Conv2dGeometry& g, const Tensor& gx, const Tensor& gw,
                               const Tensor& gb);

  // Convolution through im2col/col2im on contiguous NCHW tensors.
  virtual void im2col(const Tensor& image, const Conv2dGeometry& g, int64_t n,
                      const Tensor& col) = 0;
  virtual void col2im(const Tensor& col, const Conv2dGeometry& g, int64_t n,
                      const Tensor& image) = 0;
  // Winograd F(2x2, 3x3) transforms for 3x3, stride-1, undilated convolutions on contiguous NCHW
  // tensors. Output tile t = (n * tiles_h + th) * tiles_w + tw covers outputs (2th.., 2tw..),
  // tiles_h = ceil(out_h / 2), and the 16 transformed positions lead: v [16, C, tiles] and
  // m [16, O, tiles], so that m[i] = u[i] v[i] is one GEMM per position. The tiles of a row are
  // contiguous; positions and rows may lie further apart (v may be a slice of a larger batch).
  // v = B^T d B over every 4x4 input window (positions outside the image read as zero).
  virtual void winograd_input(const Tensor& x, const Conv2dGeometry& g, const Tensor& v) = 0;
  // x = the adjoint of winograd_input applied to v (the input gradient; x is overwritten).
  virtual void winograd_input_backward(const Tensor& v, const Conv2dGeometry& g,
                                       const Tensor& x) = 0;
  // y = A^T m A (+ bias[o] when defined), clipped to the output.
  virtual void winograd_output(const Tensor& m, const Tensor& bias, const Conv2dGeometry& g,
                               const Tensor& y) = 0;
  // m = A dy A^T, the adjoint of winograd_output.
  virtual void winograd_output_backward(const Tensor& dy, const Conv2dGeometry& g,
                                        const Tensor& m) = 0;
  // Pooling over contiguous [planes, h, w]; max pooling records int64 argmax offsets.
  virtual void max_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out,
                          const Tensor& indices) = 0;
  virtual void max_pool2d_backward(const Tensor& grad, const Tensor& indices,
                                   const Pool2dGeometry& g, const Tensor& grad_in) = 0;
  virtual void avg_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out) = 0;
  virtual void avg_pool2d_backward(const Tensor& grad, const Pool2dGeometry& g,
                                   const Tensor& grad_in) = 0;
};

Backend& backend_for(Device device);

}  // namespace cohort::core
