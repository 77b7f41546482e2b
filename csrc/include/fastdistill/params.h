// Plain parameter structs handed from the host code (which validates tensors) to the kernels.
// Flash-attention style: raw pointers + sizes + a dtype tag, no torch types, so the CUDA
// translation units compile without torch headers.
#pragma once

#include <cstdint>

namespace fastdistill {

enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// out[i] = w[i] - softplus(raw_lr[0]) * g[i], i < n. All buffers contiguous, same dtype;
// raw_lr is a single element of that dtype on the same device.
struct InnerUpdateParams {
  void* out;
  const void* w;
  const void* g;
  const void* raw_lr;
  int64_t n;
  DType dtype;
};

// v_new[i] = v[i] - softplus(raw_lr[0]) * hv[i];  dlr[0] = -sum_i g[i] * v[i].
// CUDA only: `partials` is scratch for `num_partials` accumulator values (float for
// float32/float16/bfloat16, double for float64), written by stage 1 and reduced by stage 2 in
// a fixed order (deterministic).
struct AdjointUpdateParams {
  void* v_new;
  void* dlr;
  const void* v;
  const void* hv;
  const void* g;
  const void* raw_lr;
  int64_t n;
  DType dtype;
  void* partials;
  int64_t num_partials;
};

// Launch geometry of the CUDA adjoint_update reduction, shared by host and device code.
// The grid size depends only on n (not on the GPU), so results are bitwise reproducible
// across runs and devices of the same architecture.
constexpr int kAdjointThreads = 256;
constexpr int kAdjointItemsPerThread = 8;
constexpr int64_t kAdjointMaxBlocks = 1024;

inline int64_t adjoint_update_num_blocks(int64_t n) {
  const int64_t per_block = int64_t(kAdjointThreads) * kAdjointItemsPerThread;
  int64_t blocks = (n + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  if (blocks > kAdjointMaxBlocks) blocks = kAdjointMaxBlocks;
  return blocks;
}

}  // namespace fastdistill
