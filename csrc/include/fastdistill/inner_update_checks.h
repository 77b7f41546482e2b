// Input checks of fastdistill::inner_update, shared by its CPU and CUDA host code.
#pragma once

#include <ATen/core/Tensor.h>

#include "fastdistill/checks.h"

namespace fastdistill {

// inner_update(w, g, raw_lr): w is [B, P] (any shape is accepted: the op is elementwise).
inline void check_inner_update(const at::Tensor& w, const at::Tensor& g, const at::Tensor& raw_lr,
                               c10::DeviceType device_type) {
  constexpr const char* op = "fastdistill::inner_update";
  check_reference_arg(op, "w", w, device_type);
  check_like(op, "g", g, "w", w, /*same_shape=*/true);
  check_like(op, "raw_lr", raw_lr, "w", w, /*same_shape=*/false);
  check_scalar(op, "raw_lr", raw_lr);
}

}  // namespace fastdistill
