// Kernel launchers of the CUDA ops. Implemented in csrc/cuda/*.cu (compiled by nvcc without
// torch headers), called by the host code in csrc/cuda/ops_cuda.cpp after validation.
#pragma once

#include <cuda_runtime_api.h>

#include "fastdistill/params.h"

namespace fastdistill {

// Both return the launch status (cudaGetLastError after the launches).
cudaError_t launch_inner_update(const InnerUpdateParams& p, cudaStream_t stream);
cudaError_t launch_adjoint_update(const AdjointUpdateParams& p, cudaStream_t stream);

}  // namespace fastdistill
