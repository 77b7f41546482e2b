// Device helpers shared by the CUDA kernels: op-math types, loads/stores, vector access,
// deterministic block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastdistill/math.h"
#include "fastdistill/params.h"

namespace fastdistill {
namespace cuda {

// Arithmetic type for a storage type: half types compute in float.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<__half> {
  using type = float;
};
template <>
struct OpMath<__nv_bfloat16> {
  using type = float;
};

template <typename T>
__device__ __forceinline__ typename OpMath<T>::type to_op(T x) {
  return x;
}
template <>
__device__ __forceinline__ float to_op<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_op<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_op(typename OpMath<T>::type x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_op<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_op<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// 16-byte aligned vector of N elements for wide loads/stores.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Sum over the block, result valid in thread 0. Fixed shuffle/tree order: deterministic.
// blockDim.x must be a multiple of 32 and at most 1024.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t x) {
  __shared__ acc_t warp_sums[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_down_sync(0xffffffffu, x, offset);
  }
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  const int num_warps = blockDim.x >> 5;
  if (warp == 0) {
    x = lane < num_warps ? warp_sums[lane] : acc_t(0);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      x += __shfl_down_sync(0xffffffffu, x, offset);
    }
  }
  return x;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cuda
}  // namespace fastdistill
