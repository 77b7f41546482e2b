// fastdistill::conv_pool_{forward,gather,backward}: a 2-d convolution (stride 1, dilation 1, one
// group, zero padding) followed by 2x2/2 max pooling and optionally a ReLU, for B nets at once.
// Plain structs shared by the host code and the CUDA kernels (no torch types).
//
// Layouts (all contiguous):
//   x     [N, G*Cin, H, W]     G = 1 (one input shared by all nets) or G = B (one per net)
//   w     [B, Cout, Cin, KH, KW]
//   b     [B, Cout]            optional
//   out, code, grad  [N, B*Cout, HP, WP]
// Conv output size HO = H + 2*ph - KH + 1 (WO likewise); pooled HP = HO / 2, WP = WO / 2.
// code = dy*2 + dx of the window's maximum (first maximum in scan order, as ATen's max_pool2d;
// NaN wins), or kInactive where the ReLU zeroed the output: such positions carry no gradient.
#pragma once

#include <cstdint>

#include "fastdistill/params.h"

namespace fastdistill {

constexpr uint8_t kConvPoolInactive = 255;

struct ConvPoolDims {
  int64_t N, G, B, Cin, H, W, Cout, KH, KW, ph, pw, HP, WP;
  int64_t K() const { return Cin * KH * KW; }
};

// forward: out, code from x, w, b (relu: pool then ReLU, == ReLU then pool).
// gather: out = conv(x, w) + b at each code position (0 where inactive).
// backward: from grad at pooled positions (ignored where inactive):
//   dx = d/dx (summed over nets if G = 1), dw = d/dw, db = d/db.
// backward_tangent (CPU kernel): backward and its tangent along (grad_t, x_t, w_t) in one pass
//   over the images (the codes are piecewise constant, so they have no tangent):
//   dx_t = D(grad_t, w) + D(grad, w_t), dw_t = Wg(grad_t, x) + Wg(grad, x_t), db_t = sum grad_t.
struct ConvPoolParams {
  ConvPoolDims d;
  DType dtype;
  const void* x;
  const void* w;
  const void* b;  // may be null
  const void* grad;
  const uint8_t* code;
  void* out;
  uint8_t* code_out;
  void* dx;  // null = not wanted
  void* dw;
  void* db;
  // backward_tangent's second stream (null in the other ops; x_t may be null: no input tangent)
  const void* grad_t;
  const void* x_t;
  const void* w_t;
  void* dx_t;
  void* dw_t;
  void* db_t;
  bool relu;
  void* scratch;  // CUDA backward: partial sums (accumulator type), scratch_elems of them
  int64_t scratch_elems;
};

}  // namespace fastdistill
