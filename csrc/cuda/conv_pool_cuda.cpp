// Host code of the CUDA fastdistill::conv_pool_* ops: validate, make contiguous, allocate, fill
// the parameter struct, launch on the current stream. Compiled as C++ (not by nvcc).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "fastdistill/checks.h"
#include "fastdistill/conv_pool.h"
#include "fastdistill/conv_pool_checks.h"
#include "fastdistill/conv_pool_cuda.h"

namespace fastdistill {
namespace {

ConvPoolParams make_params(const ConvPoolDims& d, const at::Tensor& x) {
  ConvPoolParams p{};
  p.d = d;
  p.dtype = to_dtype(x.scalar_type());
  return p;
}

std::tuple<at::Tensor, at::Tensor> conv_pool_forward_cuda(const at::Tensor& x,
                                                          const at::Tensor& w,
                                                          const std::optional<at::Tensor>& b,
                                                          c10::IntArrayRef padding, bool relu) {
  constexpr const char* op = "fastdistill::conv_pool_forward";
  const ConvPoolDims d = conv_pool_dims(op, x, w, b, padding, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w.contiguous();
  const bool has_b = b.has_value() && b->defined();
  const at::Tensor bc = has_b ? b->contiguous() : at::Tensor();
  at::Tensor out = at::empty({d.N, d.B * d.Cout, d.HP, d.WP}, x.options());
  at::Tensor code = at::empty({d.N, d.B * d.Cout, d.HP, d.WP}, x.options().dtype(at::kByte));
  if (out.numel() == 0) return std::make_tuple(out, code);
  ConvPoolParams p = make_params(d, x);
  p.x = xc.const_data_ptr();
  p.w = wc.const_data_ptr();
  p.b = has_b ? bc.const_data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.code_out = code.data_ptr<uint8_t>();
  p.relu = relu;
  C10_CUDA_CHECK(launch_conv_pool_forward(p, c10::cuda::getCurrentCUDAStream().stream()));
  return std::make_tuple(out, code);
}

at::Tensor conv_pool_gather_cuda(const at::Tensor& x, const at::Tensor& w,
                                 const std::optional<at::Tensor>& b, const at::Tensor& code,
                                 c10::IntArrayRef padding) {
  constexpr const char* op = "fastdistill::conv_pool_gather";
  const ConvPoolDims d = conv_pool_dims(op, x, w, b, padding, c10::DeviceType::CUDA);
  check_conv_pool_code(op, d, code, x, nullptr);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w.contiguous();
  const at::Tensor cc = code.contiguous();
  const bool has_b = b.has_value() && b->defined();
  const at::Tensor bc = has_b ? b->contiguous() : at::Tensor();
  at::Tensor out = at::empty(code.sizes(), x.options());
  if (out.numel() == 0) return out;
  ConvPoolParams p = make_params(d, x);
  p.x = xc.const_data_ptr();
  p.w = wc.const_data_ptr();
  p.b = has_b ? bc.const_data_ptr() : nullptr;
  p.code = cc.const_data_ptr<uint8_t>();
  p.out = out.data_ptr();
  C10_CUDA_CHECK(launch_conv_pool_gather(p, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& code,
    c10::IntArrayRef padding, std::array<bool, 3> mask) {
  constexpr const char* op = "fastdistill::conv_pool_backward";
  const ConvPoolDims d = conv_pool_dims(op, x, w, std::nullopt, padding, c10::DeviceType::CUDA);
  check_conv_pool_code(op, d, code, x, &grad);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor gc = grad.contiguous();
  const at::Tensor xc = x.contiguous();
  const at::Tensor wc = w.contiguous();
  const at::Tensor cc = code.contiguous();
  at::Tensor dx = mask[0] ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor dw = mask[1] ? at::empty(w.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor db = mask[2] ? at::empty({d.B, d.Cout}, x.options()) : at::empty({0}, x.options());
  if (d.N == 0) {
    dx.zero_();
    dw.zero_();
    db.zero_();
    return std::make_tuple(dx, dw, db);
  }
  ConvPoolParams p = make_params(d, x);
  p.grad = gc.const_data_ptr();
  p.x = xc.const_data_ptr();
  p.w = wc.const_data_ptr();
  p.code = cc.const_data_ptr<uint8_t>();
  p.dx = mask[0] ? dx.data_ptr() : nullptr;
  p.dw = mask[1] ? dw.data_ptr() : nullptr;
  p.db = mask[2] ? db.data_ptr() : nullptr;
  C10_CUDA_CHECK(launch_conv_pool_backward(p, c10::cuda::getCurrentCUDAStream().stream()));
  return std::make_tuple(dx, dw, db);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("conv_pool_forward", &conv_pool_forward_cuda);
  m.impl("conv_pool_gather", &conv_pool_gather_cuda);
  m.impl("conv_pool_backward", &conv_pool_backward_cuda);
}

}  // namespace fastdistill
