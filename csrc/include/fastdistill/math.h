// Scalar math shared by the CPU kernels (C++) and the CUDA kernels (nvcc).
// No torch headers here: this file is included by the .cu files, which are compiled without
// them to keep nvcc fast.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FD_HOST_DEVICE inline
#endif

namespace fastdistill {

// softplus(x) = log(1 + exp(x)), evaluated as max(x, 0) + log1p(exp(-|x|)): exact to rounding
// for every finite x (no overflow for large x, no cancellation for very negative x).
template <typename T>
FD_HOST_DEVICE T softplus(T x) {
  const T ax = x < T(0) ? -x : x;
  const T pos = x > T(0) ? x : T(0);
  return pos + ::log1p(::exp(-ax));
}

template <>
FD_HOST_DEVICE float softplus<float>(float x) {
  const float ax = ::fabsf(x);
  const float pos = x > 0.f ? x : 0.f;
  return pos + ::log1pf(::expf(-ax));
}

// sigmoid(x) = d softplus(x) / dx, stable for both signs.
template <typename T>
FD_HOST_DEVICE T sigmoid(T x) {
  if (x >= T(0)) {
    return T(1) / (T(1) + ::exp(-x));
  }
  const T e = ::exp(x);
  return e / (T(1) + e);
}

}  // namespace fastdistill
