// Function multiversioning for the CPU kernels: the build targets baseline x86-64 (SSE2) so the
// extension runs on any x86-64 CPU; hot loops get AVX-512 and AVX2 clones, picked at load time
// (ifunc).
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__CUDACC__) && \
    !defined(FASTDISTILL_NO_CLONES)
#define FD_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FD_CPU_CLONES
#endif

#if defined(__GNUC__)
#define FD_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FD_ALWAYS_INLINE inline
#endif
