// Host code of the CUDA fastdistill::soft_label_loss ops: validate, prepare (shared with the CPU
// wrapper, soft_label_loss_host.h), launch on the current stream of the inputs' device. Compiled as
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
#include "fastdistill/soft_label_loss_host.h"

namespace fastdistill {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor soft_label_loss_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                c10::string_view kind_name) {
  const LabelKind kind = check_soft_label_loss("fastdistill::soft_label_loss", logits, labels,
                                               kind_name, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  SoftLabelLossForwardCall c = prepare_soft_label_loss(logits, labels, kind);
  C10_CUDA_CHECK(launch_soft_label_loss(c.p, current_stream()));
  return c.loss;
}

std::tuple<at::Tensor, at::Tensor> soft_label_loss_backward_cuda(const at::Tensor& grad,
                                                                 const at::Tensor& logits,
                                                                 const at::Tensor& labels,
                                                                 c10::string_view kind_name) {
  const LabelKind kind =
      check_soft_label_loss_backward(grad, logits, labels, kind_name, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  SoftLabelLossBackwardCall c = prepare_soft_label_loss_backward(grad, logits, labels, kind);
  C10_CUDA_CHECK(launch_soft_label_loss_backward(c.p, current_stream()));
  return std::make_tuple(c.grad_logits, c.grad_labels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_label_loss_double_backward_cuda(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
    const at::Tensor& gg_logits, const at::Tensor& gg_labels, c10::string_view kind_name) {
  const LabelKind kind = check_soft_label_loss_double_backward(
      grad, logits, labels, gg_logits, gg_labels, kind_name, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  SoftLabelLossDoubleBackwardCall c =
      prepare_soft_label_loss_double_backward(grad, logits, labels, gg_logits, gg_labels, kind);
  C10_CUDA_CHECK(launch_soft_label_loss_double_backward(c.p, current_stream()));
  return std::make_tuple(c.grad_grad, c.grad_logits, c.grad_labels);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("soft_label_loss", &soft_label_loss_cuda);
  m.impl("soft_label_loss_backward", &soft_label_loss_backward_cuda);
  m.impl("soft_label_loss_double_backward", &soft_label_loss_double_backward_cuda);
}

}  // namespace fastdistill
