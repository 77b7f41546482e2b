// Host-side input checks of fastdistill::conv_pool_* (CPU and CUDA entry points). Same rules as
// fastdistill/ops/reference/conv_pool.py: dtype problems raise TypeError, shapes ValueError.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "fastdistill/checks.h"
#include "fastdistill/conv_pool.h"

namespace fastdistill {

// Validates x, w, b, padding and returns the dimensions.
inline ConvPoolDims conv_pool_dims(const char* op, const at::Tensor& x, const at::Tensor& w,
                                   const std::optional<at::Tensor>& b, c10::IntArrayRef padding,
                                   c10::DeviceType device_type) {
  TORCH_CHECK_VALUE(x.defined(), op, ": `x` is an undefined tensor");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": `x` must have dtype float32 or float64");
  TORCH_CHECK_VALUE(x.device().type() == device_type, op, ": `x` is on the wrong device type");
  check_like(op, "w", w, "x", x, /*same_shape=*/false);
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": `x` must be 4-D [N, G*Cin, H, W]");
  TORCH_CHECK_VALUE(w.dim() == 5, op, ": `w` must be 5-D [B, Cout, Cin, KH, KW]");
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
                    ": `padding` must be two non-negative ints");
  ConvPoolDims d;
  d.N = x.size(0);
  d.H = x.size(2);
  d.W = x.size(3);
  d.B = w.size(0);
  d.Cout = w.size(1);
  d.Cin = w.size(2);
  d.KH = w.size(3);
  d.KW = w.size(4);
  d.ph = padding[0];
  d.pw = padding[1];
  TORCH_CHECK_VALUE(d.B >= 1 && d.Cout >= 1 && d.Cin >= 1 && d.KH >= 1 && d.KW >= 1, op,
                    ": `w` has an empty dimension");
  if (x.size(1) == d.Cin) {
    d.G = 1;
  } else {
    TORCH_CHECK_VALUE(x.size(1) == d.Cin * d.B, op,
                      ": `x` must have Cin (shared input) or B*Cin (one input per net) channels");
    d.G = d.B;
  }
  const int64_t HO = d.H + 2 * d.ph - d.KH + 1;
  const int64_t WO = d.W + 2 * d.pw - d.KW + 1;
  TORCH_CHECK_VALUE(HO >= 2 && WO >= 2, op,
                    ": the convolution output must be at least 2x2 for the 2x2 pooling");
  d.HP = HO / 2;
  d.WP = WO / 2;
  if (b.has_value() && b->defined()) {
    check_like(op, "b", *b, "x", x, /*same_shape=*/false);
    TORCH_CHECK_VALUE(b->dim() == 2 && b->size(0) == d.B && b->size(1) == d.Cout, op,
                      ": `b` must be [B, Cout]");
  }
  return d;
}

// Every code must be 0-3 (the argmax position dy*2+dx in its 2x2 window) or 255 (inactive):
// the kernels read the conv output at the coded position, so any other value would read outside
// the window. One pass over the codes (on a GPU: a few ATen ops and one host sync).
inline void check_conv_pool_code_values(const char* op, const at::Tensor& code) {
  if (code.numel() == 0) return;
  int64_t bad_index = -1;
  int bad_value = 0;
  if (code.device().is_cpu()) {
    const at::Tensor c = code.contiguous();
    const uint8_t* p = c.const_data_ptr<uint8_t>();
    const int64_t n = c.numel();
    // Blocks without an early exit (the compiler vectorizes them); the first bad one is
    // searched only when a block has one.
    constexpr int64_t kBlock = 4096;
    for (int64_t b0 = 0; b0 < n && bad_index < 0; b0 += kBlock) {
      const int64_t b1 = std::min(n, b0 + kBlock);
      uint8_t any = 0;
      for (int64_t i = b0; i < b1; ++i) any |= static_cast<uint8_t>(p[i] > 3 && p[i] != 255);
      for (int64_t i = b0; any != 0 && i < b1; ++i) {
        if (p[i] > 3 && p[i] != 255) {
          bad_index = i;
          bad_value = p[i];
          break;
        }
      }
    }
  } else {
    const at::Tensor bad = at::logical_and(code.gt(3), code.ne(255)).flatten();
    if (bad.any().item<bool>()) {
      bad_index = bad.nonzero().select(1, 0)[0].item<int64_t>();
      bad_value = code.flatten()[bad_index].item<uint8_t>();
    }
  }
  TORCH_CHECK_VALUE(bad_index < 0, op, ": `code` holds the invalid value ",
                    std::to_string(bad_value), " at flat index ", std::to_string(bad_index),
                    "; valid codes are 0-3 (argmax in the 2x2 window) and 255 (inactive), as ",
                    "conv_pool_forward returns them");
}

// `code` (and `grad` if given) must be [N, B*Cout, HP, WP] on x's device.
inline void check_conv_pool_code(const char* op, const ConvPoolDims& d, const at::Tensor& code,
                                 const at::Tensor& x, const at::Tensor* grad) {
  TORCH_CHECK_VALUE(code.defined(), op, ": `code` is an undefined tensor");
  TORCH_CHECK_TYPE(code.scalar_type() == at::kByte, op, ": `code` must have dtype uint8");
  TORCH_CHECK_VALUE(code.device() == x.device(), op, ": `code` must be on the device of `x`");
  const bool shape_ok = code.dim() == 4 && code.size(0) == d.N && code.size(1) == d.B * d.Cout &&
                        code.size(2) == d.HP && code.size(3) == d.WP;
  TORCH_CHECK_VALUE(shape_ok, op, ": `code` must be [N, B*Cout, HP, WP]");
  check_conv_pool_code_values(op, code);
  if (grad != nullptr) {
    check_like(op, "grad", *grad, "x", x, /*same_shape=*/false);
    TORCH_CHECK_VALUE(grad->sizes() == code.sizes(), op, ": `grad` must have the shape of `code`");
  }
}

// backward_tangent's tangent stream: grad_t like grad, w_t like w, x_t (optional) like x.
inline void check_conv_pool_tangent(const char* op, const at::Tensor& grad,
                                    const at::Tensor& grad_t, const at::Tensor& x,
                                    const std::optional<at::Tensor>& x_t, const at::Tensor& w,
                                    const at::Tensor& w_t) {
  check_like(op, "grad_t", grad_t, "grad", grad, /*same_shape=*/true);
  check_like(op, "w_t", w_t, "w", w, /*same_shape=*/true);
  if (x_t.has_value() && x_t->defined()) check_like(op, "x_t", *x_t, "x", x, /*same_shape=*/true);
}

}  // namespace fastdistill
