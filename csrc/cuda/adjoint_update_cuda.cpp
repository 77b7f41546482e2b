// Host code of fastdistill::adjoint_update on CUDA: validate, make contiguous, allocate, fill the
// parameter struct, launch on the current stream of the inputs' device. Compiled as C++ (not by
// nvcc).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "fastdistill/adjoint_update_checks.h"
#include "fastdistill/cuda_launch.h"
#include "fastdistill/params.h"

namespace fastdistill {
namespace {

std::tuple<at::Tensor, at::Tensor> adjoint_update_cuda(const at::Tensor& v, const at::Tensor& hv,
                                                       const at::Tensor& g,
                                                       const at::Tensor& raw_lr) {
  check_adjoint_update(v, hv, g, raw_lr, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(v.device());
  const at::Tensor vc = v.contiguous();
  const at::Tensor hvc = hv.contiguous();
  const at::Tensor gc = g.contiguous();
  at::Tensor v_new = at::empty(v.sizes(), v.options());
  at::Tensor dlr = at::empty({}, v.options());
  const int64_t num_partials = adjoint_update_num_blocks(v.numel());
  const at::ScalarType acc_type = v.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partials = at::empty({num_partials}, v.options().dtype(acc_type));
  AdjointUpdateParams p;
  p.v_new = v_new.data_ptr();
  p.dlr = dlr.data_ptr();
  p.v = vc.const_data_ptr();
  p.hv = hvc.const_data_ptr();
  p.g = gc.const_data_ptr();
  p.raw_lr = raw_lr.const_data_ptr();
  p.n = v.numel();
  p.dtype = to_dtype(v.scalar_type());
  p.partials = partials.data_ptr();
  p.num_partials = num_partials;
  C10_CUDA_CHECK(launch_adjoint_update(p, c10::cuda::getCurrentCUDAStream().stream()));
  return std::make_tuple(v_new, dlr);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) { m.impl("adjoint_update", &adjoint_update_cuda); }

}  // namespace fastdistill
