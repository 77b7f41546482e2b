// Host-side input checks of fastdistill::max_pool2d (same rules and wording as
// fastdistill/ops/reference/max_pool.py). The kernels get the plain PoolParams.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "fastdistill/checks.h"

namespace fastdistill {

struct PoolParams {
  int64_t kh, kw, sh, sw, ph, pw;
  int64_t H, W, OH, OW;
};

inline PoolParams check_max_pool2d(const char* op, const at::Tensor& input,
                                   c10::IntArrayRef kernel, c10::IntArrayRef stride,
                                   c10::IntArrayRef padding, c10::DeviceType device_type) {
  check_float_input(op, "input", input, device_type);
  TORCH_CHECK_VALUE(input.dim() == 3 || input.dim() == 4, op,
                    ": `input` must be [C, H, W] or [N, C, H, W], got shape ", shape_str(input));
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2, op,
                    ": `kernel_size`, `stride` and `padding` must have two entries each");
  TORCH_CHECK_VALUE(kernel[0] >= 1 && kernel[1] >= 1 && stride[0] >= 1 && stride[1] >= 1, op,
                    ": `kernel_size` and `stride` must be >= 1, got ", shape_str(kernel), " and ",
                    shape_str(stride));
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0 && 2 * padding[0] <= kernel[0] &&
                        2 * padding[1] <= kernel[1],
                    op, ": `padding` must be between 0 and half the kernel size, got ",
                    shape_str(padding), " for kernel ", shape_str(kernel));
  const int64_t H = input.size(-2), W = input.size(-1);
  const int64_t OH = (H + 2 * padding[0] - kernel[0]) / stride[0] + 1;
  const int64_t OW = (W + 2 * padding[1] - kernel[1]) / stride[1] + 1;
  TORCH_CHECK_VALUE(H + 2 * padding[0] >= kernel[0] && W + 2 * padding[1] >= kernel[1], op,
                    ": the padded input ", shape_str(input), " is smaller than the kernel ",
                    shape_str(kernel));
  return PoolParams{kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1],
                    H,         W,         OH,        OW};
}

}  // namespace fastdistill
