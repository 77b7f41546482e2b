// Host-side input validation shared by the CPU and CUDA entry points. Every message names the
// op and the argument. Shape/device problems raise ValueError in Python, dtype problems
// TypeError, the same types (and wording) as the pure-PyTorch reference path.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "fastdistill/params.h"

namespace fastdistill {

// Error messages are built from strings only: integers go through std::to_string and shapes
// through shape_str, never `<<` of an int64_t or IntArrayRef. On the H200 machine (torch 2.11,
// Python 3.12, g++ 13.3) any message that streamed an integer segfaulted the
// process inside the stream's number formatting, while strings, dtypes and devices were fine
// (tools/gpu_diag.py runs each case in its own process).
inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

// An int list (kernel sizes, strides) as "[a, b]".
inline std::string shape_str(c10::IntArrayRef v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kDouble:
      return DType::kFloat64;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastdistill: unsupported dtype ", t);
  }
}

// The first tensor argument `ref` sets dtype and device; it must be a float tensor on
// `device_type`.
inline void check_reference_arg(const char* op, const char* name, const at::Tensor& ref,
                                c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(ref.defined(), op, ": `", name, "` is an undefined tensor");
  TORCH_CHECK_TYPE(is_supported_dtype(ref.scalar_type()), op, ": `", name,
                   "` must have dtype float32, float64, float16 or bfloat16, got ",
                   ref.scalar_type());
  TORCH_CHECK_VALUE(ref.device().type() == device_type, op, ": `", name, "` must be on a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " device, got ",
                    ref.device());
}

// `t` must be a defined float32/float64 tensor on `device_type` (ops with no half kernels).
inline void check_float_input(const char* op, const char* name, const at::Tensor& t,
                              c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(t.defined(), op, ": `", name, "` is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": `",
                   name, "` must have dtype float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().type() == device_type, op, ": `", name, "` must be on a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " device, got ",
                    t.device());
}

// `t` must match `ref` (named `ref_name`) in dtype and device, and in shape if `same_shape`.
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref, bool same_shape) {
  TORCH_CHECK_VALUE(t.defined(), op, ": `", name, "` is an undefined tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": `", name,
                   "` must have the same dtype as `", ref_name, "` (", ref.scalar_type(),
                   "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": `", name,
                    "` must be on the same device as `", ref_name, "` (", ref.device(),
                    "), got ", t.device());
  if (same_shape) {
    TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": `", name,
                      "` must have the same shape as `", ref_name, "` ", shape_str(ref), ", got ",
                      shape_str(t));
  }
}

inline void check_scalar(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 0, op, ": `", name,
                    "` must be a 0-d tensor (one step size), got shape ", shape_str(t));
}

}  // namespace fastdistill
