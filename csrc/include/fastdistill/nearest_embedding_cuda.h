// Kernel launchers of fastdistill::nearest_embedding (csrc/cuda/nearest_embedding.cu, compiled
// by nvcc without torch headers), called by csrc/cuda/nearest_embedding_cuda.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include "fastdistill/nearest_embedding.h"

namespace fastdistill {

// All return the launch status (cudaGetLastError after the launch).
cudaError_t launch_row_norms(const RowNormsParams& p, cudaStream_t stream);
cudaError_t launch_nearest_select_tile(const NearestTileParams& p, cudaStream_t stream);
cudaError_t launch_nearest_scores_to_keys(const NearestKeysParams& p, cudaStream_t stream);
cudaError_t launch_nearest_finalize(const NearestFinalizeParams& p, cudaStream_t stream);

}  // namespace fastdistill
