// Input checks of fastdistill::adjoint_update, shared by its CPU and CUDA host code.
#pragma once

#include <ATen/core/Tensor.h>

#include "fastdistill/checks.h"

namespace fastdistill {

inline void check_adjoint_update(const at::Tensor& v, const at::Tensor& hv, const at::Tensor& g,
                                 const at::Tensor& raw_lr, c10::DeviceType device_type) {
  constexpr const char* op = "fastdistill::adjoint_update";
  check_reference_arg(op, "v", v, device_type);
  check_like(op, "hv", hv, "v", v, /*same_shape=*/true);
  check_like(op, "g", g, "v", v, /*same_shape=*/true);
  check_like(op, "raw_lr", raw_lr, "v", v, /*same_shape=*/false);
  check_scalar(op, "raw_lr", raw_lr);
}

}  // namespace fastdistill
