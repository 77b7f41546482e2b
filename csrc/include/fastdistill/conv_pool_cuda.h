// Kernel launchers of fastdistill::conv_pool_* (csrc/cuda/conv_pool.cu, compiled by nvcc without
// torch headers), called by csrc/cuda/conv_pool_cuda.cpp after validation.
#pragma once

#include <cuda_runtime_api.h>

#include "fastdistill/conv_pool.h"

namespace fastdistill {

// All return the launch status (cudaGetLastError after the launches).
cudaError_t launch_conv_pool_forward(const ConvPoolParams& p, cudaStream_t stream);
cudaError_t launch_conv_pool_gather(const ConvPoolParams& p, cudaStream_t stream);
cudaError_t launch_conv_pool_backward(const ConvPoolParams& p, cudaStream_t stream);

}  // namespace fastdistill
