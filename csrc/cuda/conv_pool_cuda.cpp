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
#include "fastdistill/conv_pool_host.h"

namespace fastdistill {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<at::Tensor, at::Tensor> conv_pool_forward_cuda(const at::Tensor& x,
                                                          const at::Tensor& w,
                                                          const std::optional<at::Tensor>& b,
                                                          c10::IntArrayRef padding, bool relu) {
  constexpr const char* op = "fastdistill::conv_pool_forward";
  const ConvPoolDims d = conv_pool_dims(op, x, w, b, padding, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  ConvPoolForwardCall c = prepare_conv_pool_forward(d, x, w, b, relu);
  if (!c.empty) C10_CUDA_CHECK(launch_conv_pool_forward(c.p, current_stream()));
  return std::make_tuple(c.out, c.code);
}

at::Tensor conv_pool_gather_cuda(const at::Tensor& x, const at::Tensor& w,
                                 const std::optional<at::Tensor>& b, const at::Tensor& code,
                                 c10::IntArrayRef padding) {
  constexpr const char* op = "fastdistill::conv_pool_gather";
  const ConvPoolDims d = conv_pool_dims(op, x, w, b, padding, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  ConvPoolGatherCall c = prepare_conv_pool_gather(op, d, x, w, b, code);
  if (!c.empty) C10_CUDA_CHECK(launch_conv_pool_gather(c.p, current_stream()));
  return c.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& code,
    c10::IntArrayRef padding, std::array<bool, 3> mask) {
  constexpr const char* op = "fastdistill::conv_pool_backward";
  const ConvPoolDims d = conv_pool_dims(op, x, w, std::nullopt, padding, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  ConvPoolBackwardCall c = prepare_conv_pool_backward(op, d, grad, x, w, code, mask);
  if (!c.empty) C10_CUDA_CHECK(launch_conv_pool_backward(c.p, current_stream()));
  return std::make_tuple(c.dx, c.dw, c.db);
}

// The backward and its tangent as three backward launches (no fused kernel on CUDA yet).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
conv_pool_backward_tangent_cuda(const at::Tensor& grad, const at::Tensor& grad_t,
                                const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                                const at::Tensor& w, const at::Tensor& w_t, const at::Tensor& code,
                                c10::IntArrayRef padding, std::array<bool, 4> mask) {
  constexpr const char* op = "fastdistill::conv_pool_backward_tangent";
  conv_pool_dims(op, x, w, std::nullopt, padding, c10::DeviceType::CUDA);
  check_conv_pool_tangent(op, grad, grad_t, x, x_t, w, w_t);
  const bool has_xt = x_t.has_value() && x_t->defined();
  auto [dx, dw, db] = conv_pool_backward_cuda(grad, x, w, code, padding,
                                              {mask[0], mask[3], mask[2] && mask[3]});
  auto [dx_t, dw_t, db_t] =
      conv_pool_backward_cuda(grad_t, x, w, code, padding, {mask[1], true, mask[2]});
  if (mask[1] || has_xt) {
    auto [dx2, dw2, unused] = conv_pool_backward_cuda(grad, has_xt ? *x_t : x, w_t, code,
                                                      padding, {mask[1], has_xt, false});
    if (has_xt) dw_t.add_(dw2);
    if (mask[1]) dx_t.add_(dx2);
  }
  return std::make_tuple(dx, dw, db, dx_t, dw_t, db_t);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("conv_pool_forward", &conv_pool_forward_cuda);
  m.impl("conv_pool_gather", &conv_pool_gather_cuda);
  m.impl("conv_pool_backward", &conv_pool_backward_cuda);
  m.impl("conv_pool_backward_tangent", &conv_pool_backward_tangent_cuda);
}

}  // namespace fastdistill
