// Kernel launchers of fastdistill::soft_label_loss and its backward ops
// (csrc/cuda/soft_label_loss.cu, compiled by nvcc without torch headers), called by
// csrc/cuda/soft_label_loss_cuda.cpp after validation.
#pragma once

#include <cuda_runtime_api.h>

#include "fastdistill/soft_label_loss.h"

namespace fastdistill {

// All return the launch status (cudaGetLastError after the launch).
cudaError_t launch_soft_label_loss(const SoftLabelLossParams& p, cudaStream_t stream);
cudaError_t launch_soft_label_loss_backward(const SoftLabelLossParams& p, cudaStream_t stream);
cudaError_t launch_soft_label_loss_double_backward(const SoftLabelLossParams& p,
                                                   cudaStream_t stream);

}  // namespace fastdistill
