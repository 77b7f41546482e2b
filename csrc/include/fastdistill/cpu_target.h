// Function multiversioning for the CPU kernels: the build targets baseline x86-64 (SSE2) so the
// extension runs on any x86-64 CPU; hot loops get AVX-512 and AVX2 clones, picked at load time
// (ifunc). With GCC >= 12 the clones are the x86-64-v4 and -v3 levels: AVX-512 with DQ/BW/VL
// (comparisons that make integer lane masks stay vector operations; plain avx512f scalarizes
// them) and AVX2 with FMA (plain avx2 has no fused multiply-add).
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__CUDACC__) && \
    !defined(FASTDISTILL_NO_CLONES)
#if !defined(__clang__) && __GNUC__ >= 12
#define FD_CPU_LEVELS 1
#define FD_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FD_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define FD_CPU_CLONES
#endif

#if defined(__GNUC__)
#define FD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FD_ALWAYS_INLINE inline
#endif

namespace fastdistill {

// Whether this CPU has AVX-512 (32 vector registers): kernels with wide register tiles pick
// narrower ones where AVX2's 16 would make them spill.
inline bool cpu_has_avx512() {
#if defined(FD_CPU_LEVELS)
  static const bool has = __builtin_cpu_supports("x86-64-v4");  // the clone that runs
  return has;
#elif defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

}  // namespace fastdistill
