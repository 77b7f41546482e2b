// Host-side preparation of the conv_pool ops, shared by the CPU and CUDA wrappers: validate the
// code tensor, make inputs contiguous, allocate outputs, fill the plain parameter struct. The
// wrappers differ only in how they run it (AT_DISPATCH + loops, or a kernel launch). A call
// struct owns its tensors, so the pointers in `p` stay valid while it lives; `empty` says there
// is no work (the outputs are already final).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>

#include <array>
#include <cstdint>
#include <optional>

#include "fastdistill/checks.h"
#include "fastdistill/conv_pool.h"
#include "fastdistill/conv_pool_checks.h"

namespace fastdistill {

inline ConvPoolParams conv_pool_params(const ConvPoolDims& d, const at::Tensor& x) {
  ConvPoolParams p{};
  p.d = d;
  p.dtype = to_dtype(x.scalar_type());
  return p;
}

inline at::Tensor contiguous_bias(const std::optional<at::Tensor>& b) {
  return b.has_value() && b->defined() ? b->contiguous() : at::Tensor();
}

struct ConvPoolForwardCall {
  at::Tensor xc, wc, bc, out, code;
  ConvPoolParams p;
  bool empty;
};

inline ConvPoolForwardCall prepare_conv_pool_forward(const ConvPoolDims& d, const at::Tensor& x,
                                                     const at::Tensor& w,
                                                     const std::optional<at::Tensor>& b,
                                                     bool relu) {
  ConvPoolForwardCall c;
  c.xc = x.contiguous();
  c.wc = w.contiguous();
  c.bc = contiguous_bias(b);
  c.out = at::empty({d.N, d.B * d.Cout, d.HP, d.WP}, x.options());
  c.code = at::empty({d.N, d.B * d.Cout, d.HP, d.WP}, x.options().dtype(at::kByte));
  c.empty = c.out.numel() == 0;
  c.p = conv_pool_params(d, x);
  if (c.empty) return c;
  c.p.x = c.xc.const_data_ptr();
  c.p.w = c.wc.const_data_ptr();
  c.p.b = c.bc.defined() ? c.bc.const_data_ptr() : nullptr;
  c.p.out = c.out.data_ptr();
  c.p.code_out = c.code.data_ptr<uint8_t>();
  c.p.relu = relu;
  return c;
}

struct ConvPoolGatherCall {
  at::Tensor xc, wc, bc, cc, out;
  ConvPoolParams p;
  bool empty;
};

inline ConvPoolGatherCall prepare_conv_pool_gather(const char* op, const ConvPoolDims& d,
                                                   const at::Tensor& x, const at::Tensor& w,
                                                   const std::optional<at::Tensor>& b,
                                                   const at::Tensor& code) {
  check_conv_pool_code(op, d, code, x, nullptr);
  ConvPoolGatherCall c;
  c.xc = x.contiguous();
  c.wc = w.contiguous();
  c.cc = code.contiguous();
  c.bc = contiguous_bias(b);
  c.out = at::empty(code.sizes(), x.options());
  c.empty = c.out.numel() == 0;
  c.p = conv_pool_params(d, x);
  if (c.empty) return c;
  c.p.x = c.xc.const_data_ptr();
  c.p.w = c.wc.const_data_ptr();
  c.p.b = c.bc.defined() ? c.bc.const_data_ptr() : nullptr;
  c.p.code = c.cc.const_data_ptr<uint8_t>();
  c.p.out = c.out.data_ptr();
  return c;
}

struct ConvPoolBackwardCall {
  at::Tensor gc, xc, wc, cc, dx, dw, db;
  ConvPoolParams p;
  bool empty;
};

inline ConvPoolBackwardCall prepare_conv_pool_backward(const char* op, const ConvPoolDims& d,
                                                       const at::Tensor& grad,
                                                       const at::Tensor& x, const at::Tensor& w,
                                                       const at::Tensor& code,
                                                       std::array<bool, 3> mask) {
  check_conv_pool_code(op, d, code, x, &grad);
  ConvPoolBackwardCall c;
  c.gc = grad.contiguous();
  c.xc = x.contiguous();
  c.wc = w.contiguous();
  c.cc = code.contiguous();
  const auto opts = x.options();
  c.dx = mask[0] ? at::empty(x.sizes(), opts) : at::empty({0}, opts);
  c.dw = mask[1] ? at::empty(w.sizes(), opts) : at::empty({0}, opts);
  c.db = mask[2] ? at::empty({d.B, d.Cout}, opts) : at::empty({0}, opts);
  c.p = conv_pool_params(d, x);
  // no pooled output: every gradient is zero
  c.empty = d.N == 0 || d.HP == 0 || d.WP == 0;
  if (c.empty) {
    c.dx.zero_();
    c.dw.zero_();
    c.db.zero_();
    return c;
  }
  c.p.grad = c.gc.const_data_ptr();
  c.p.x = c.xc.const_data_ptr();
  c.p.w = c.wc.const_data_ptr();
  c.p.code = c.cc.const_data_ptr<uint8_t>();
  c.p.dx = mask[0] ? c.dx.data_ptr() : nullptr;
  c.p.dw = mask[1] ? c.dw.data_ptr() : nullptr;
  c.p.db = mask[2] ? c.db.data_ptr() : nullptr;
  return c;
}

// backward_tangent: the primal backward's tensors plus the tangent stream. mask = (dx, dx_t,
// biases, primal weight gradients): dw_t is always computed, dw (and db) only with mask[3]
// (the fused step skips them when its gradient step already has them). x_t may be undefined
// (no input tangent).
struct ConvPoolBackwardTangentCall {
  at::Tensor gc, gtc, xc, xtc, wc, wtc, cc, dx, dw, db, dx_t, dw_t, db_t;
  ConvPoolParams p;
  bool empty;
};

inline ConvPoolBackwardTangentCall prepare_conv_pool_backward_tangent(
    const char* op, const ConvPoolDims& d, const at::Tensor& grad, const at::Tensor& grad_t,
    const at::Tensor& x, const std::optional<at::Tensor>& x_t, const at::Tensor& w,
    const at::Tensor& w_t, const at::Tensor& code, std::array<bool, 4> mask) {
  check_conv_pool_code(op, d, code, x, &grad);
  check_conv_pool_tangent(op, grad, grad_t, x, x_t, w, w_t);
  const bool has_xt = x_t.has_value() && x_t->defined();
  ConvPoolBackwardTangentCall c;
  c.gc = grad.contiguous();
  c.gtc = grad_t.contiguous();
  c.xc = x.contiguous();
  if (has_xt) c.xtc = x_t->contiguous();
  c.wc = w.contiguous();
  c.wtc = w_t.contiguous();
  c.cc = code.contiguous();
  const auto opts = x.options();
  auto out = [&](bool want, c10::IntArrayRef shape) {
    return want ? at::empty(shape, opts) : at::empty({0}, opts);
  };
  c.dx = out(mask[0], x.sizes());
  c.dx_t = out(mask[1], x.sizes());
  c.dw = out(mask[3], w.sizes());
  c.dw_t = at::empty(w.sizes(), opts);
  c.db = out(mask[2] && mask[3], {d.B, d.Cout});
  c.db_t = out(mask[2], {d.B, d.Cout});
  c.p = conv_pool_params(d, x);
  c.empty = d.N == 0 || d.HP == 0 || d.WP == 0;
  if (c.empty) {
    for (at::Tensor* t : {&c.dx, &c.dw, &c.db, &c.dx_t, &c.dw_t, &c.db_t}) t->zero_();
    return c;
  }
  c.p.grad = c.gc.const_data_ptr();
  c.p.grad_t = c.gtc.const_data_ptr();
  c.p.x = c.xc.const_data_ptr();
  c.p.x_t = has_xt ? c.xtc.const_data_ptr() : nullptr;
  c.p.w = c.wc.const_data_ptr();
  c.p.w_t = c.wtc.const_data_ptr();
  c.p.code = c.cc.const_data_ptr<uint8_t>();
  c.p.dx = mask[0] ? c.dx.data_ptr() : nullptr;
  c.p.dx_t = mask[1] ? c.dx_t.data_ptr() : nullptr;
  c.p.dw = mask[3] ? c.dw.data_ptr() : nullptr;
  c.p.dw_t = c.dw_t.data_ptr();
  c.p.db = mask[2] && mask[3] ? c.db.data_ptr() : nullptr;
  c.p.db_t = mask[2] ? c.db_t.data_ptr() : nullptr;
  return c;
}

}  // namespace fastdistill
