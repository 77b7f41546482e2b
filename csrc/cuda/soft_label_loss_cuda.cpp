// Host code of the CUDA fastdistill::soft_label_loss ops: validate, make contiguous, allocate,
// fill the parameter struct, launch on the current stream of the inputs' device. Compiled as
// C++ (not by nvcc).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

#include "fastdistill/checks.h"
#include "fastdistill/soft_label_loss.h"
#include "fastdistill/soft_label_loss_checks.h"
#include "fastdistill/soft_label_loss_cuda.h"

namespace fastdistill {
namespace {

SoftLabelLossParams make_params(const at::Tensor& logits, LabelKind kind) {
  SoftLabelLossParams p{};
  p.rows = logits.size(0);
  p.cols = logits.size(1);
  p.kind = kind;
  p.dtype = to_dtype(logits.scalar_type());
  return p;
}

at::Tensor soft_label_loss_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                c10::string_view kind_name) {
  const LabelKind kind = check_soft_label_loss("fastdistill::soft_label_loss", logits, labels,
                                               kind_name, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous();
  const at::Tensor y = labels.contiguous();
  at::Tensor loss = at::empty({z.size(0)}, z.options());
  SoftLabelLossParams p = make_params(z, kind);
  p.logits = z.const_data_ptr();
  p.labels = y.const_data_ptr();
  p.out_rows = loss.data_ptr();
  C10_CUDA_CHECK(launch_soft_label_loss(p, c10::cuda::getCurrentCUDAStream().stream()));
  return loss;
}

std::tuple<at::Tensor, at::Tensor> soft_label_loss_backward_cuda(const at::Tensor& grad,
                                                                 const at::Tensor& logits,
                                                                 const at::Tensor& labels,
                                                                 c10::string_view kind_name) {
  const LabelKind kind =
      check_soft_label_loss_backward(grad, logits, labels, kind_name, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor z = logits.contiguous();
  const at::Tensor y = labels.contiguous();
  at::Tensor grad_logits = at::empty(z.sizes(), z.options());
  at::Tensor grad_labels = at::empty(y.sizes(), y.options());
  SoftLabelLossParams p = make_params(z, kind);
  p.logits = z.const_data_ptr();
  p.labels = y.const_data_ptr();
  p.grad = g.const_data_ptr();
  p.out_logits = grad_logits.data_ptr();
  p.out_labels = grad_labels.data_ptr();
  C10_CUDA_CHECK(launch_soft_label_loss_backward(p, c10::cuda::getCurrentCUDAStream().stream()));
  return std::make_tuple(grad_logits, grad_labels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_label_loss_double_backward_cuda(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
    const at::Tensor& gg_logits, const at::Tensor& gg_labels, c10::string_view kind_name) {
  const LabelKind kind = check_soft_label_loss_double_backward(
      grad, logits, labels, gg_logits, gg_labels, kind_name, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor z = logits.contiguous();
  const at::Tensor y = labels.contiguous();
  const at::Tensor u = gg_logits.contiguous();
  const at::Tensor w = gg_labels.contiguous();
  at::Tensor grad_grad = at::empty(g.sizes(), g.options());
  at::Tensor grad_logits = at::empty(z.sizes(), z.options());
  at::Tensor grad_labels = at::empty(y.sizes(), y.options());
  SoftLabelLossParams p = make_params(z, kind);
  p.logits = z.const_data_ptr();
  p.labels = y.const_data_ptr();
  p.grad = g.const_data_ptr();
  p.gg_logits = u.const_data_ptr();
  p.gg_labels = w.const_data_ptr();
  p.out_rows = grad_grad.data_ptr();
  p.out_logits = grad_logits.data_ptr();
  p.out_labels = grad_labels.data_ptr();
  C10_CUDA_CHECK(
      launch_soft_label_loss_double_backward(p, c10::cuda::getCurrentCUDAStream().stream()));
  return std::make_tuple(grad_grad, grad_logits, grad_labels);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("soft_label_loss", &soft_label_loss_cuda);
  m.impl("soft_label_loss_backward", &soft_label_loss_backward_cuda);
  m.impl("soft_label_loss_double_backward", &soft_label_loss_double_backward_cuda);
}

}  // namespace fastdistill
