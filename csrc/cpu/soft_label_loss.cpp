// CPU kernels of fastdistill::soft_label_loss, soft_label_loss_backward and
// soft_label_loss_double_backward: rows split into at::parallel_for chunks, one row at a time
// per thread (row math in fastdistill/soft_label_loss_rows.h, column loops vectorized), in the
// inputs' dtype. Each row is independent and reduced in a fixed order: results do not depend
// on the thread count.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "fastdistill/checks.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/soft_label_loss.h"
#include "fastdistill/soft_label_loss_checks.h"
#include "fastdistill/soft_label_loss_host.h"
#include "fastdistill/soft_label_loss_rows.h"

namespace fastdistill {
namespace {

using slrow::SerialRow;

// Elements per row of a labels-shaped buffer.
inline int64_t label_cols(const SoftLabelLossParams& p) {
  return p.kind == LabelKind::kBinary ? 1 : p.cols;
}

template <typename scalar_t>
FD_ALWAYS_INLINE void forward_body(const SoftLabelLossParams& p, int64_t begin, int64_t end) {
  const auto* z = static_cast<const scalar_t*>(p.logits);
  const auto* y = static_cast<const scalar_t*>(p.labels);
  auto* loss = static_cast<scalar_t*>(p.out_rows);
  const int64_t K = p.cols;
  const int64_t ly = label_cols(p);
  for (int64_t r = begin; r < end; ++r) {
    loss[r] = slrow::forward_row<SerialRow, scalar_t>(z + r * K, y + r * ly, K, p.kind);
  }
}

template <typename scalar_t>
FD_ALWAYS_INLINE void backward_body(const SoftLabelLossParams& p, int64_t begin, int64_t end) {
  const auto* z = static_cast<const scalar_t*>(p.logits);
  const auto* y = static_cast<const scalar_t*>(p.labels);
  const auto* g = static_cast<const scalar_t*>(p.grad);
  auto* gz = static_cast<scalar_t*>(p.out_logits);
  auto* gy = static_cast<scalar_t*>(p.out_labels);
  const int64_t K = p.cols;
  const int64_t ly = label_cols(p);
  for (int64_t r = begin; r < end; ++r) {
    slrow::backward_row<SerialRow, scalar_t>(g[r], z + r * K, y + r * ly, K, p.kind, gz + r * K,
                                             gy + r * ly);
  }
}

template <typename scalar_t>
FD_ALWAYS_INLINE void double_backward_body(const SoftLabelLossParams& p, int64_t begin,
                                           int64_t end) {
  const auto* z = static_cast<const scalar_t*>(p.logits);
  const auto* y = static_cast<const scalar_t*>(p.labels);
  const auto* g = static_cast<const scalar_t*>(p.grad);
  const auto* u = static_cast<const scalar_t*>(p.gg_logits);
  const auto* w = static_cast<const scalar_t*>(p.gg_labels);
  auto* dg = static_cast<scalar_t*>(p.out_rows);
  auto* dz = static_cast<scalar_t*>(p.out_logits);
  auto* dy = static_cast<scalar_t*>(p.out_labels);
  const int64_t K = p.cols;
  const int64_t ly = label_cols(p);
  for (int64_t r = begin; r < end; ++r) {
    dg[r] = slrow::double_backward_row<SerialRow, scalar_t>(g[r], z + r * K, y + r * ly,
                                                            u + r * K, w + r * ly, K, p.kind,
                                                            dz + r * K, dy + r * ly);
  }
}

// Non-template entry points so that each gets its own AVX-512/AVX2 clones (the dtype is the
// first argument's). Rows are computed in their own dtype.
FD_CPU_CLONES void forward_range(float, const SoftLabelLossParams& p, int64_t b, int64_t e) {
  forward_body<float>(p, b, e);
}
FD_CPU_CLONES void forward_range(double, const SoftLabelLossParams& p, int64_t b, int64_t e) {
  forward_body<double>(p, b, e);
}
FD_CPU_CLONES void backward_range(float, const SoftLabelLossParams& p, int64_t b, int64_t e) {
  backward_body<float>(p, b, e);
}
FD_CPU_CLONES void backward_range(double, const SoftLabelLossParams& p, int64_t b, int64_t e) {
  backward_body<double>(p, b, e);
}
FD_CPU_CLONES void double_backward_range(float, const SoftLabelLossParams& p, int64_t b,
                                         int64_t e) {
  double_backward_body<float>(p, b, e);
}
FD_CPU_CLONES void double_backward_range(double, const SoftLabelLossParams& p, int64_t b,
                                         int64_t e) {
  double_backward_body<double>(p, b, e);
}

enum class Pass { kForward, kBackward, kDoubleBackward };

template <typename scalar_t>
void run_rows_typed(const SoftLabelLossParams& p, Pass pass) {
  const int64_t grain = std::max<int64_t>(1, kSoftLabelCpuGrainElements / p.cols);
  at::parallel_for(0, p.rows, grain, [&](int64_t begin, int64_t end) {
    switch (pass) {
      case Pass::kForward:
        forward_range(scalar_t(0), p, begin, end);
        break;
      case Pass::kBackward:
        backward_range(scalar_t(0), p, begin, end);
        break;
      case Pass::kDoubleBackward:
        double_backward_range(scalar_t(0), p, begin, end);
        break;
    }
  });
}

void run_rows(const SoftLabelLossParams& p, Pass pass) {
  if (p.rows == 0) return;
  if (p.dtype == DType::kFloat32) {
    run_rows_typed<float>(p, pass);
  } else {
    run_rows_typed<double>(p, pass);
  }
}

at::Tensor soft_label_loss_cpu(const at::Tensor& logits, const at::Tensor& labels,
                               c10::string_view kind_name) {
  const LabelKind kind = check_soft_label_loss("fastdistill::soft_label_loss", logits, labels,
                                               kind_name, c10::DeviceType::CPU);
  SoftLabelLossForwardCall c = prepare_soft_label_loss(logits, labels, kind);
  run_rows(c.p, Pass::kForward);
  return c.loss;
}

std::tuple<at::Tensor, at::Tensor> soft_label_loss_backward_cpu(const at::Tensor& grad,
                                                                const at::Tensor& logits,
                                                                const at::Tensor& labels,
                                                                c10::string_view kind_name) {
  const LabelKind kind =
      check_soft_label_loss_backward(grad, logits, labels, kind_name, c10::DeviceType::CPU);
  SoftLabelLossBackwardCall c = prepare_soft_label_loss_backward(grad, logits, labels, kind);
  run_rows(c.p, Pass::kBackward);
  return std::make_tuple(c.grad_logits, c.grad_labels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_label_loss_double_backward_cpu(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
    const at::Tensor& gg_logits, const at::Tensor& gg_labels, c10::string_view kind_name) {
  const LabelKind kind = check_soft_label_loss_double_backward(
      grad, logits, labels, gg_logits, gg_labels, kind_name, c10::DeviceType::CPU);
  SoftLabelLossDoubleBackwardCall c =
      prepare_soft_label_loss_double_backward(grad, logits, labels, gg_logits, gg_labels, kind);
  run_rows(c.p, Pass::kDoubleBackward);
  return std::make_tuple(c.grad_grad, c.grad_logits, c.grad_labels);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("soft_label_loss", &soft_label_loss_cpu);
  m.impl("soft_label_loss_backward", &soft_label_loss_backward_cpu);
  m.impl("soft_label_loss_double_backward", &soft_label_loss_double_backward_cpu);
}

}  // namespace fastdistill
