// Host-side input checks of fastdistill::local_response_norm and its backward (same rules and
// wording as fastdistill/ops/reference/local_response_norm.py): dtype problems raise TypeError,
// shape/device/value problems ValueError. The kernels get the plain LrnParams.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "fastdistill/checks.h"

namespace fastdistill {

// Window of channel c: [c - lo, c + hi] (torch's padding: size / 2 before, (size - 1) / 2 after).
struct LrnParams {
  int64_t size, lo, hi;
  double alpha, beta, k;
};

inline LrnParams check_local_response_norm(const char* op, const at::Tensor& input, int64_t size,
                                           double alpha, double beta, double k,
                                           c10::DeviceType device_type) {
  check_float_input(op, "input", input, device_type);
  TORCH_CHECK_VALUE(input.dim() >= 3, op,
                    ": `input` must have 3 or more dimensions [N, C, ...], got shape ",
                    shape_str(input));
  TORCH_CHECK_VALUE(size >= 1, op, ": `size` must be >= 1, got ", std::to_string(size));
  TORCH_CHECK_VALUE(std::isfinite(alpha) && std::isfinite(beta) && std::isfinite(k), op,
                    ": `alpha`, `beta` and `k` must be finite, got ",
                    std::to_string(alpha), ", ", std::to_string(beta), ", ", std::to_string(k));
  return LrnParams{size, size / 2, (size - 1) / 2, alpha, beta, k};
}

}  // namespace fastdistill
