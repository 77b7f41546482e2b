// Host-side preparation of a soft_label_loss call, shared by the CPU and CUDA wrappers: make the
// inputs contiguous, allocate the outputs and fill the plain parameter struct. The wrappers
// differ only in how they run the rows (at::parallel_for or a kernel launch). Each call struct
// owns its tensors, so the pointers in `p` stay valid for as long as the struct lives.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "fastdistill/checks.h"
#include "fastdistill/soft_label_loss.h"

namespace fastdistill {

inline SoftLabelLossParams soft_label_loss_params(const at::Tensor& logits, LabelKind kind) {
  SoftLabelLossParams p{};
  p.rows = logits.size(0);
  p.cols = logits.size(1);
  p.kind = kind;
  p.dtype = to_dtype(logits.scalar_type());
  return p;
}

struct SoftLabelLossForwardCall {
  at::Tensor z, y, loss;
  SoftLabelLossParams p;
};

inline SoftLabelLossForwardCall prepare_soft_label_loss(const at::Tensor& logits,
                                                        const at::Tensor& labels,
                                                        LabelKind kind) {
  SoftLabelLossForwardCall c;
  c.z = logits.contiguous();
  c.y = labels.contiguous();
  c.loss = at::empty({c.z.size(0)}, c.z.options());
  c.p = soft_label_loss_params(c.z, kind);
  c.p.logits = c.z.const_data_ptr();
  c.p.labels = c.y.const_data_ptr();
  c.p.out_rows = c.loss.data_ptr();
  return c;
}

struct SoftLabelLossBackwardCall {
  at::Tensor g, z, y, grad_logits, grad_labels;
  SoftLabelLossParams p;
};

inline SoftLabelLossBackwardCall prepare_soft_label_loss_backward(const at::Tensor& grad,
                                                                  const at::Tensor& logits,
                                                                  const at::Tensor& labels,
                                                                  LabelKind kind) {
  SoftLabelLossBackwardCall c;
  c.g = grad.contiguous();
  c.z = logits.contiguous();
  c.y = labels.contiguous();
  c.grad_logits = at::empty(c.z.sizes(), c.z.options());
  c.grad_labels = at::empty(c.y.sizes(), c.y.options());
  c.p = soft_label_loss_params(c.z, kind);
  c.p.logits = c.z.const_data_ptr();
  c.p.labels = c.y.const_data_ptr();
  c.p.grad = c.g.const_data_ptr();
  c.p.out_logits = c.grad_logits.data_ptr();
  c.p.out_labels = c.grad_labels.data_ptr();
  return c;
}

struct SoftLabelLossDoubleBackwardCall {
  at::Tensor g, z, y, u, w, grad_grad, grad_logits, grad_labels;
  SoftLabelLossParams p;
};

inline SoftLabelLossDoubleBackwardCall prepare_soft_label_loss_double_backward(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
    const at::Tensor& gg_logits, const at::Tensor& gg_labels, LabelKind kind) {
  SoftLabelLossDoubleBackwardCall c;
  c.g = grad.contiguous();
  c.z = logits.contiguous();
  c.y = labels.contiguous();
  c.u = gg_logits.contiguous();
  c.w = gg_labels.contiguous();
  c.grad_grad = at::empty(c.g.sizes(), c.g.options());
  c.grad_logits = at::empty(c.z.sizes(), c.z.options());
  c.grad_labels = at::empty(c.y.sizes(), c.y.options());
  c.p = soft_label_loss_params(c.z, kind);
  c.p.logits = c.z.const_data_ptr();
  c.p.labels = c.y.const_data_ptr();
  c.p.grad = c.g.const_data_ptr();
  c.p.gg_logits = c.u.const_data_ptr();
  c.p.gg_labels = c.w.const_data_ptr();
  c.p.out_rows = c.grad_grad.data_ptr();
  c.p.out_logits = c.grad_logits.data_ptr();
  c.p.out_labels = c.grad_labels.data_ptr();
  return c;
}

}  // namespace fastdistill
