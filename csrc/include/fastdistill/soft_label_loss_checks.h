// Host-side input checks of fastdistill::soft_label_loss and its backward ops (CPU and CUDA
// entry points). Same rules, exception types and wording as
// fastdistill/ops/reference/soft_label_loss.py: dtype problems raise TypeError,
// shape/device/value problems ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

#include "fastdistill/checks.h"
#include "fastdistill/soft_label_loss.h"

namespace fastdistill {

inline LabelKind parse_label_kind(const char* op, c10::string_view kind) {
  if (kind == "soft") return LabelKind::kSoft;
  if (kind == "softmax") return LabelKind::kSoftmax;
  if (kind == "binary") return LabelKind::kBinary;
  TORCH_CHECK_VALUE(false, op, ": `kind` must be 'soft', 'softmax' or 'binary', got '",
                    std::string(kind), "'");
  return LabelKind::kSoft;  // unreachable
}

// logits [N, K] float32/float64 on `device_type`; labels [N, K] (soft, softmax) or [N] with
// K == 1 (binary), same dtype and device. Returns the kind.
inline LabelKind check_soft_label_loss(const char* op, const at::Tensor& logits,
                                       const at::Tensor& labels, c10::string_view kind_name,
                                       c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(logits.defined(), op, ": `logits` is an undefined tensor");
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, op,
                   ": `logits` must have dtype float32 or float64, got ", logits.scalar_type(),
                   " (fastdistill.ops.soft_label_loss computes float16/bfloat16 in float32)");
  TORCH_CHECK_VALUE(logits.device().type() == device_type, op, ": `logits` must be on a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " device, got ",
                    logits.device());
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": `logits` must be a 2-D tensor [N, K], got shape ",
                    shape_str(logits));
  TORCH_CHECK_VALUE(logits.size(1) >= 1, op,
                    ": `logits` must have at least one column (K >= 1), got shape ",
                    shape_str(logits));
  const LabelKind kind = parse_label_kind(op, kind_name);
  check_like(op, "labels", labels, "logits", logits, /*same_shape=*/false);
  if (kind == LabelKind::kBinary) {
    TORCH_CHECK_VALUE(logits.size(1) == 1, op,
                      ": kind 'binary' takes one logit per example: `logits` must have shape "
                      "[N, 1], got ",
                      shape_str(logits));
    TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == logits.size(0), op,
                      ": kind 'binary' takes one label per example: `labels` must have shape "
                      "[N] = [",
                      std::to_string(logits.size(0)), "], got ", shape_str(labels));
  } else {
    TORCH_CHECK_VALUE(labels.sizes() == logits.sizes(), op,
                      ": `labels` must have the same shape as `logits` ", shape_str(logits), ", got ",
                      shape_str(labels));
  }
  return kind;
}

// `grad` [N]: the upstream gradient of the per-example losses.
inline void check_row_grad(const char* op, const at::Tensor& grad, const at::Tensor& logits) {
  check_like(op, "grad", grad, "logits", logits, /*same_shape=*/false);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == logits.size(0), op,
                    ": `grad` must have shape [N] = [", std::to_string(logits.size(0)), "], got ", shape_str(grad));
}

inline LabelKind check_soft_label_loss_backward(const at::Tensor& grad, const at::Tensor& logits,
                                                const at::Tensor& labels,
                                                c10::string_view kind_name,
                                                c10::DeviceType device_type) {
  constexpr const char* op = "fastdistill::soft_label_loss_backward";
  const LabelKind kind = check_soft_label_loss(op, logits, labels, kind_name, device_type);
  check_row_grad(op, grad, logits);
  return kind;
}

inline LabelKind check_soft_label_loss_double_backward(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
    const at::Tensor& gg_logits, const at::Tensor& gg_labels, c10::string_view kind_name,
    c10::DeviceType device_type) {
  constexpr const char* op = "fastdistill::soft_label_loss_double_backward";
  const LabelKind kind = check_soft_label_loss(op, logits, labels, kind_name, device_type);
  check_row_grad(op, grad, logits);
  check_like(op, "gg_logits", gg_logits, "logits", logits, /*same_shape=*/true);
  check_like(op, "gg_labels", gg_labels, "labels", labels, /*same_shape=*/true);
  return kind;
}

}  // namespace fastdistill
