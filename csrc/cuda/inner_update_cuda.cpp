// Host code of fastdistill::inner_update on CUDA: validate, make contiguous, allocate, fill the
// parameter struct, launch on the current stream of the inputs' device. Compiled as C++ (not by
// nvcc).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastdistill/inner_update_checks.h"
#include "fastdistill/cuda_launch.h"
#include "fastdistill/params.h"

namespace fastdistill {
namespace {

at::Tensor inner_update_cuda(const at::Tensor& w, const at::Tensor& g, const at::Tensor& raw_lr) {
  check_inner_update(w, g, raw_lr, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  const at::Tensor gc = g.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options());
  if (out.numel() == 0) {
    return out;
  }
  InnerUpdateParams p;
  p.out = out.data_ptr();
  p.w = wc.const_data_ptr();
  p.g = gc.const_data_ptr();
  p.raw_lr = raw_lr.const_data_ptr();
  p.n = out.numel();
  p.dtype = to_dtype(w.scalar_type());
  C10_CUDA_CHECK(launch_inner_update(p, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) { m.impl("inner_update", &inner_update_cuda); }

}  // namespace fastdistill
