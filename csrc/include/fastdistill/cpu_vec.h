// Portable SIMD helpers of the CPU kernels: 64-byte GCC/Clang vector-extension types (one
// AVX-512 register, two AVX2 ones, four SSE2 ones; the FD_CPU_CLONES of cpu_target.h pick the
// instruction set at load time) and unaligned loads/stores through memcpy. Header-only and
// inline; no torch headers. Used by csrc/cpu/conv_pool.cpp.
//
//   Vec<T>::type   T x (64 / sizeof(T)) lanes, Vec<T>::kLanes of them (16 float, 8 double)
//   IVec<T>::type  the integer vector of the same lane count (comparison results, masks)
//   vload<V>(p)    load a V from any address;  vstore(p, v): store it
#pragma once

#include <cstdint>
#include <cstring>

#include "fastdistill/cpu_target.h"

// 64-byte vector extension types are passed between always-inline helpers only: silence the
// ABI note GCC emits for them (this pragma stays in effect for the including file).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastdistill {

// ---------------------------------------------------------------- vectorized inner kernels
// GCC/Clang vector extensions (64 bytes: one AVX-512 register, two AVX2 ones), unaligned
// loads/stores through memcpy.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int kLanes = 64 / sizeof(T);
};

template <typename V, typename T>
FD_ALWAYS_INLINE V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
FD_ALWAYS_INLINE void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Integer lanes matching Vec<T> (comparison results).
template <typename T>
struct IVec;
template <>
struct IVec<float> {
  typedef int32_t type __attribute__((vector_size(64)));
};
template <>
struct IVec<double> {
  typedef int64_t type __attribute__((vector_size(64)));
};

}  // namespace fastdistill
