// CPU kernels of fastdistill::conv_pool_{forward,gather,backward} (see conv_pool.h).
//
// Each input plane is copied once into a zero-padded buffer of the rows/columns the pooled
// outputs need (HR x WR per channel). A convolution output at (y, x) is then, for every kernel
// tap k = (ci, ky, kx), plane[off[k] + j] with j = y*WR + x: over the flattened j the whole
// output map is ONE contiguous correlation per tap (columns x >= 2*WP are computed and thrown
// away), which vectorizes well whatever the image width (GCC/Clang vector extensions, AVX-512 /
// AVX2 clones picked at load time). Forward: register blocks of output channels x positions,
// then the 2x2 max (ATen's first-maximum rule), its code and the ReLU, a vector of windows at a
// time. Gather (tangent): the same correlation, read at the coded positions. Backward: the
// pooled gradients are scattered into the flattened layout, then the weight gradient (blocks
// of 4 channels x 4 taps, per-lane partial sums) and the input gradient (blocks of input
// channels, two accumulator chains) run as dense correlations over it.
//
// Parallel over images (small calls stay on one thread); weight/bias gradients are summed per
// fixed chunk of images and the chunks added in order, so results do not depend on the thread
// count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastdistill/checks.h"
#include "fastdistill/conv_pool.h"
#include "fastdistill/conv_pool_channel_tiles.h"
#include "fastdistill/conv_pool_checks.h"
#include "fastdistill/conv_pool_host.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/cpu_vec.h"

namespace fastdistill {
namespace {

constexpr int64_t kBlock = 16;  // output channels per correlation call (one conv buffer)

// Geometry of the flattened padded planes.
struct Flat {
  int64_t HR, WR, plane, L, Lpad, buf;  // buf: elements of one Cin-plane stack incl. slack
};

Flat flat_geometry(const ConvPoolDims& d, int64_t JB) {
  Flat f;
  f.HR = 2 * d.HP + d.KH - 1;
  f.WR = 2 * d.WP + d.KW - 1;
  f.plane = f.HR * f.WR;
  f.L = (2 * d.HP - 1) * f.WR + 2 * d.WP;
  f.Lpad = (f.L + JB - 1) / JB * JB;
  f.buf = d.Cin * f.plane + JB;  // reads of a full last block stay inside
  return f;
}

std::vector<int64_t> tap_offsets(const ConvPoolDims& d, const Flat& f) {
  std::vector<int64_t> off(static_cast<size_t>(d.K()));
  int64_t k = 0;
  for (int64_t ci = 0; ci < d.Cin; ++ci)
    for (int64_t ky = 0; ky < d.KH; ++ky)
      for (int64_t kx = 0; kx < d.KW; ++kx) off[k++] = ci * f.plane + ky * f.WR + kx;
  return off;
}

// Copy the Cin channels of one image into the zero-padded flattened planes.
template <typename T>
void fill_planes(T* dst, const T* src, const ConvPoolDims& d, const Flat& f) {
  std::fill(dst, dst + f.buf, T(0));
  for (int64_t ci = 0; ci < d.Cin; ++ci) {
    const T* s = src + ci * d.H * d.W;
    T* p = dst + ci * f.plane;
    for (int64_t r = 0; r < f.HR; ++r) {
      const int64_t iy = r - d.ph;
      if (iy < 0 || iy >= d.H) continue;
      const int64_t c0 = std::max<int64_t>(0, d.pw);
      const int64_t c1 = std::min<int64_t>(f.WR, d.W + d.pw);
      for (int64_t c = c0; c < c1; ++c) p[r * f.WR + c] = s[iy * d.W + (c - d.pw)];
    }
  }
}

// ---------------------------------------------------------------- vectorized inner kernels
// Vec<T>, IVec<T>, vload, vstore: fastdistill/cpu_vec.h. NV vectors per block of JB = NV * lanes
// flattened positions.

// Blocks of NV vectors of positions: NV = 2 for large planes (two independent accumulator
// chains per channel), NV = 1 for small ones (less padding waste), see pick_kernels().

// out[c][j] = bias[c] + sum_k w[c*K + k] * plane[off[k] + j] for COB channels and the NV
// vectors of positions from j0 on (the sum in k order, whatever the tile).
// ACC: out += the sum instead (bias unused).
template <typename T, int COB, int NV, bool ACC = false>
FD_ALWAYS_INLINE void corr_block(const T* __restrict__ plane, const int64_t* __restrict__ off,
                                 int64_t K, const T* __restrict__ w, const T* __restrict__ bias,
                                 T* __restrict__ out, int64_t Lpad, int64_t j0) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[COB][NV];
  for (int c = 0; c < COB; ++c) {
    for (int v = 0; v < NV; ++v) {
      if constexpr (ACC) {
        acc[c][v] = vload<V>(out + c * Lpad + j0 + v * L);
      } else {
        acc[c][v] = V{} + bias[c];
      }
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* src = plane + off[k] + j0;
    V xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = vload<V>(src + v * L);
    for (int c = 0; c < COB; ++c) {
      const T wv = w[c * K + k];
      for (int v = 0; v < NV; ++v) acc[c][v] += wv * xv[v];
    }
  }
  for (int c = 0; c < COB; ++c)
    for (int v = 0; v < NV; ++v) vstore(out + c * Lpad + j0 + v * L, acc[c][v]);
}

// All Lpad positions of COB channels: tiles of NV vectors, then single vectors.
template <typename T, int COB, int NV, bool ACC = false>
FD_ALWAYS_INLINE void corr_body(const T* plane, const int64_t* off, int64_t K, const T* w,
                                const T* bias, T* out, int64_t Lpad) {
  constexpr int L = Vec<T>::kLanes;
  int64_t j0 = 0;
  for (; j0 + NV * L <= Lpad; j0 += NV * L)
    corr_block<T, COB, NV, ACC>(plane, off, K, w, bias, out, Lpad, j0);
  for (; j0 < Lpad; j0 += L) corr_block<T, COB, 1, ACC>(plane, off, K, w, bias, out, Lpad, j0);
}

// out[j] += sum_t w[t] * src[offs[t] + j], j < n (a multiple of the vector width): one output
// channel, eight accumulator vectors (the input gradient of a one-channel input as a
// correlation of the zero-margined output gradients with the flipped kernel).
FD_CPU_CLONES void corr_add_one(const float* src, const int64_t* offs, int64_t taps,
                                const float* w, float* out, int64_t n) {
  corr_body<float, 1, 8, true>(src, offs, taps, w, nullptr, out, n);
}
FD_CPU_CLONES void corr_add_one(const double* src, const int64_t* offs, int64_t taps,
                                const double* w, double* out, int64_t n) {
  corr_body<double, 1, 8, true>(src, offs, taps, w, nullptr, out, n);
}

// dplane[off[k] + j] += sum_c w[c*K + k] * g[c][j] over all Cout channels; eight independent
// accumulator chains (the sum over c is latency-bound otherwise).
template <typename T, int NV>
FD_ALWAYS_INLINE void dgrad_body(T* __restrict__ dplane, const int64_t* __restrict__ off,
                                 int64_t K, const T* __restrict__ w, const T* __restrict__ g,
                                 int64_t Cout, int64_t Lpad) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  constexpr int A = 8 / NV;
  for (int64_t k = 0; k < K; ++k) {
    T* dst = dplane + off[k];
    for (int64_t j0 = 0; j0 < Lpad; j0 += NV * L) {
      V acc[A][NV];
      for (int a = 0; a < A; ++a)
        for (int v = 0; v < NV; ++v) acc[a][v] = V{};
      int64_t c = 0;
      for (; c + A <= Cout; c += A) {
        for (int a = 0; a < A; ++a) {
          const T wv = w[(c + a) * K + k];
          const T* gc = g + (c + a) * Lpad + j0;
          for (int v = 0; v < NV; ++v) acc[a][v] += wv * vload<V>(gc + v * L);
        }
      }
      for (int a = 0; a < A; ++a) {  // remaining channels, still one chain each
        if (c + a >= Cout) break;
        const T wv = w[(c + a) * K + k];
        const T* gc = g + (c + a) * Lpad + j0;
        for (int v = 0; v < NV; ++v) acc[a][v] += wv * vload<V>(gc + v * L);
      }
      for (int v = 0; v < NV; ++v) {
        T* d = dst + j0 + v * L;
        V sum = acc[0][v];
        for (int a = 1; a < A; ++a) sum += acc[a][v];
        vstore(d, vload<V>(d) + sum);
      }
    }
  }
}

// All n channels of a correlation in register blocks (8 or 4, 2, 1).
template <typename T, int NV>
FD_ALWAYS_INLINE void corr_all_body(const T* plane, const int64_t* off, int64_t K, const T* w,
                                    const T* bias, T* out, int64_t Lpad, int64_t n) {
  int64_t c = 0;
  if (NV == 1) {
    for (; c + 8 <= n; c += 8)
      corr_body<T, 8, 1>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  }
  for (; c + 4 <= n; c += 4)
    corr_body<T, 4, NV>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  for (; c + 2 <= n; c += 2)
    corr_body<T, 2, NV>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  for (; c < n; ++c) corr_body<T, 1, NV>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
}

// The same with AVX-512's 32 registers: tiles of ~24 accumulators (channels x vectors), so that
// each multiply-add takes well under one load (a tile of C x V costs C broadcasts + V loads per
// tap for C*V multiply-adds).
template <typename T>
FD_ALWAYS_INLINE void corr_wide_body(const T* plane, const int64_t* off, int64_t K, const T* w,
                                     const T* bias, T* out, int64_t Lpad, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    corr_body<T, 8, 3>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  for (; c + 6 <= n; c += 6)
    corr_body<T, 6, 4>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  for (; c + 4 <= n; c += 4)
    corr_body<T, 4, 6>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  for (; c + 2 <= n; c += 2)
    corr_body<T, 2, 8>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
  for (; c < n; ++c) corr_body<T, 1, 8>(plane, off, K, w + c * K, bias + c, out + c * Lpad, Lpad);
}
// Weight gradient partials, kept as vectors (summed across lanes once per chunk of images, not
// per image): dwv[c][k] += sum over vector blocks j of g[c][j] * plane[off[k] + j], for CB
// channels (g rows Lpad apart, dwv rows K vectors apart) and KB taps. CB*KB accumulators, CB+KB
// loads per CB*KB multiply-adds.
template <typename T, int CB, int KB>
FD_ALWAYS_INLINE void wgrad_block(const T* __restrict__ plane, const int64_t* __restrict__ off,
                                  const T* __restrict__ g, T* __restrict__ dwv, int64_t K,
                                  int64_t Lpad) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[CB][KB];
  for (int c = 0; c < CB; ++c)
    for (int k = 0; k < KB; ++k) acc[c][k] = V{};
  for (int64_t j = 0; j < Lpad; j += L) {
    V xv[KB];
    for (int k = 0; k < KB; ++k) xv[k] = vload<V>(plane + off[k] + j);
    for (int c = 0; c < CB; ++c) {
      const V gv = vload<V>(g + c * Lpad + j);
      for (int k = 0; k < KB; ++k) acc[c][k] += gv * xv[k];
    }
  }
  for (int c = 0; c < CB; ++c) {
    for (int k = 0; k < KB; ++k) {
      T* dst = dwv + (c * K + k) * L;
      vstore(dst, vload<V>(dst) + acc[c][k]);
    }
  }
}

// KB taps from k on for all n channels, in blocks of channels; WIDE (AVX-512's 32 registers)
// adds 6-channel blocks (24 accumulators at KB = 4) and 2-channel ones before single channels.
// Each (channel, tap) partial sums over j in the same order whatever the blocking.
template <typename T, bool WIDE, int KB>
FD_ALWAYS_INLINE void wgrad_taps(const T* plane, const int64_t* off, int64_t K, const T* g,
                                 T* dwv, int64_t Lpad, int64_t n, int64_t k) {
  constexpr int L = Vec<T>::kLanes;
  int64_t c = 0;
  if (WIDE) {
    for (; c + 6 <= n; c += 6)
      wgrad_block<T, 6, KB>(plane, off + k, g + c * Lpad, dwv + (c * K + k) * L, K, Lpad);
  }
  for (; c + 4 <= n; c += 4)
    wgrad_block<T, 4, KB>(plane, off + k, g + c * Lpad, dwv + (c * K + k) * L, K, Lpad);
  if (WIDE) {
    for (; c + 2 <= n; c += 2)
      wgrad_block<T, 2, KB>(plane, off + k, g + c * Lpad, dwv + (c * K + k) * L, K, Lpad);
  }
  for (; c < n; ++c)
    wgrad_block<T, 1, KB>(plane, off + k, g + c * Lpad, dwv + (c * K + k) * L, K, Lpad);
}

template <typename T, bool WIDE>
FD_ALWAYS_INLINE void wgrad_vec_body(const T* plane, const int64_t* off, int64_t K, const T* g,
                                     T* dwv, int64_t Lpad, int64_t n) {
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) wgrad_taps<T, WIDE, 4>(plane, off, K, g, dwv, Lpad, n, k);
  for (; k < K; ++k) wgrad_taps<T, WIDE, 1>(plane, off, K, g, dwv, Lpad, n, k);
}
#define FD_WGRAD_VEC(T, NAME, WIDE)                                                            \
  FD_CPU_CLONES void NAME(const T* plane, const int64_t* off, int64_t K, const T* g, T* dwv,   \
                          int64_t Lpad, int64_t n) {                                           \
    wgrad_vec_body<T, WIDE>(plane, off, K, g, dwv, Lpad, n);                                   \
  }
FD_WGRAD_VEC(float, wgrad_vec_narrow, false)
FD_WGRAD_VEC(double, wgrad_vec_narrow, false)
FD_WGRAD_VEC(float, wgrad_vec_wide, true)
FD_WGRAD_VEC(double, wgrad_vec_wide, true)
#undef FD_WGRAD_VEC

template <typename T>
void wgrad_vec(bool wide, const T* plane, const int64_t* off, int64_t K, const T* g, T* dwv,
               int64_t Lpad, int64_t n) {
  if (wide) {
    wgrad_vec_wide(plane, off, K, g, dwv, Lpad, n);
  } else {
    wgrad_vec_narrow(plane, off, K, g, dwv, Lpad, n);
  }
}

// Input gradient for one tap position (ky, kx), CI input channels and NJ vectors of positions
// from j on:
//   dplane[ci][tap + j] += sum_c w[c][ci][ky][kx] * g[c][j].
// The CI destinations are whole planes apart (no overlapping read-modify-writes); each g load
// feeds CI multiply-adds and each broadcast weight NJ. The channel sum runs in H interleaved
// chains where NJ * CI accumulators alone are too few to hide the multiply-add latency.
template <typename T, int NJ, int CI>
FD_ALWAYS_INLINE void dgrad_block(T* __restrict__ dst, int64_t plane, const T* __restrict__ w,
                                  int64_t taps, int64_t K, const T* __restrict__ g,
                                  int64_t Cout, int64_t Lpad, int64_t j) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  constexpr int H = NJ * CI >= 8 ? 1 : 2;
  V acc[H][NJ][CI];
  for (int h = 0; h < H; ++h)
    for (int q = 0; q < NJ; ++q)
      for (int i = 0; i < CI; ++i) acc[h][q][i] = V{};
  int64_t c = 0;
  for (; c + H <= Cout; c += H) {
    for (int h = 0; h < H; ++h) {
      const T* gc = g + (c + h) * Lpad + j;
      const T* wc = w + (c + h) * K;
      V gv[NJ];
      for (int q = 0; q < NJ; ++q) gv[q] = vload<V>(gc + q * L);
      for (int i = 0; i < CI; ++i) {
        const T wi = wc[i * taps];
        for (int q = 0; q < NJ; ++q) acc[h][q][i] += wi * gv[q];
      }
    }
  }
  for (; c < Cout; ++c) {
    const T* gc = g + c * Lpad + j;
    const T* wc = w + c * K;
    for (int q = 0; q < NJ; ++q) {
      const V gv = vload<V>(gc + q * L);
      for (int i = 0; i < CI; ++i) acc[0][q][i] += wc[i * taps] * gv;
    }
  }
  for (int i = 0; i < CI; ++i) {
    for (int q = 0; q < NJ; ++q) {
      V sum = acc[0][q][i];
      for (int h = 1; h < H; ++h) sum += acc[h][q][i];
      T* d = dst + i * plane + j + q * L;
      vstore(d, vload<V>(d) + sum);
    }
  }
}

// All positions of one tap for CI input channels: blocks of NJ vectors, then one.
template <typename T, int CI, int NJ>
FD_ALWAYS_INLINE void dgrad_tap(T* dst, int64_t plane, const T* w, int64_t taps, int64_t K,
                                const T* g, int64_t Cout, int64_t Lpad) {
  constexpr int L = Vec<T>::kLanes;
  int64_t j = 0;
  for (; j + NJ * L <= Lpad; j += NJ * L)
    dgrad_block<T, NJ, CI>(dst, plane, w, taps, K, g, Cout, Lpad, j);
  for (; j < Lpad; j += L) dgrad_block<T, 1, CI>(dst, plane, w, taps, K, g, Cout, Lpad, j);
}

// Blocks of NJ vectors per channel count: two (AVX2's 16 registers), or ~24 accumulators with
// AVX-512's 32 (wide).
template <typename T, bool WIDE>
FD_ALWAYS_INLINE void dgrad_ci_body(T* dplane, int64_t plane, int64_t WR, int64_t Cin,
                                    int64_t KH, int64_t KW, const T* w, const T* g, int64_t Cout,
                                    int64_t Lpad) {
  const int64_t K = Cin * KH * KW;
  const int64_t taps = KH * KW;
  for (int64_t ky = 0; ky < KH; ++ky) {
    for (int64_t kx = 0; kx < KW; ++kx) {
      T* dst = dplane + ky * WR + kx;
      const T* wk = w + ky * KW + kx;
      int64_t ci = 0;
      for (; ci + 6 <= Cin; ci += 6)
        dgrad_tap<T, 6, WIDE ? 4 : 2>(dst + ci * plane, plane, wk + ci * taps, taps, K, g, Cout,
                                      Lpad);
      for (; ci + 4 <= Cin; ci += 4)
        dgrad_tap<T, 4, WIDE ? 6 : 2>(dst + ci * plane, plane, wk + ci * taps, taps, K, g, Cout,
                                      Lpad);
      for (; ci + 2 <= Cin; ci += 2)
        dgrad_tap<T, 2, WIDE ? 8 : 2>(dst + ci * plane, plane, wk + ci * taps, taps, K, g, Cout,
                                      Lpad);
      for (; ci < Cin; ++ci)
        dgrad_tap<T, 1, 2>(dst + ci * plane, plane, wk + ci * taps, taps, K, g, Cout, Lpad);
    }
  }
}
#define FD_DGRAD_CI(T, NAME, WIDE)                                                             \
  FD_CPU_CLONES void NAME(T* dplane, int64_t plane, int64_t WR, int64_t Cin, int64_t KH,       \
                          int64_t KW, const T* w, const T* g, int64_t Cout, int64_t Lpad) {    \
    dgrad_ci_body<T, WIDE>(dplane, plane, WR, Cin, KH, KW, w, g, Cout, Lpad);                  \
  }
FD_DGRAD_CI(float, dgrad_ci, false)
FD_DGRAD_CI(double, dgrad_ci, false)
FD_DGRAD_CI(float, dgrad_ci_wide, true)
FD_DGRAD_CI(double, dgrad_ci_wide, true)
#undef FD_DGRAD_CI

// Non-template entry points (one per dtype and block width), each with AVX-512/AVX2 clones.
#define FD_KERNELS(T, NV)                                                                      \
  FD_CPU_CLONES void corr_all_##T##_##NV(const T* plane, const int64_t* off, int64_t K,       \
                                         const T* w, const T* bias, T* out, int64_t Lpad,      \
                                         int64_t n) {                                          \
    corr_all_body<T, NV>(plane, off, K, w, bias, out, Lpad, n);                                \
  }                                                                                            \
  FD_CPU_CLONES void dgrad_##T##_##NV(T* dplane, const int64_t* off, int64_t K, const T* w,   \
                                      const T* g, int64_t Cout, int64_t Lpad) {                \
    dgrad_body<T, NV>(dplane, off, K, w, g, Cout, Lpad);                                       \
  }
FD_KERNELS(float, 1)
FD_KERNELS(float, 2)
FD_KERNELS(double, 1)
FD_KERNELS(double, 2)
#undef FD_KERNELS
#define FD_WIDE_KERNELS(T)                                                                     \
  FD_CPU_CLONES void corr_wide_##T(const T* plane, const int64_t* off, int64_t K, const T* w,  \
                                   const T* bias, T* out, int64_t Lpad, int64_t n) {           \
    corr_wide_body<T>(plane, off, K, w, bias, out, Lpad, n);                                   \
  }
FD_WIDE_KERNELS(float)
FD_WIDE_KERNELS(double)
#undef FD_WIDE_KERNELS

// The kernels of one dtype at the block width picked for a map.
template <typename T>
struct Kernels {
  int nv;
  int64_t JB;
  bool wide;  // AVX-512 tiles (corr_wide_*, dgrad_ci's wide blocks)
  void corr(const T* plane, const int64_t* off, int64_t K, const T* w, const T* bias, T* out,
            int64_t Lpad, int64_t n) const;
  void dgrad(T* dplane, const int64_t* off, int64_t K, const T* w, const T* g, int64_t Cout,
             int64_t Lpad) const;
};
#define FD_BIND(T)                                                                             \
  template <>                                                                                  \
  void Kernels<T>::corr(const T* plane, const int64_t* off, int64_t K, const T* w,             \
                        const T* bias, T* out, int64_t Lpad, int64_t n) const {                \
    if (wide) {                                                                                \
      corr_wide_##T(plane, off, K, w, bias, out, Lpad, n);                                     \
    } else if (nv == 1) {                                                                      \
      corr_all_##T##_1(plane, off, K, w, bias, out, Lpad, n);                                  \
    } else {                                                                                   \
      corr_all_##T##_2(plane, off, K, w, bias, out, Lpad, n);                                  \
    }                                                                                          \
  }                                                                                            \
  template <>                                                                                  \
  void Kernels<T>::dgrad(T* dplane, const int64_t* off, int64_t K, const T* w, const T* g,     \
                         int64_t Cout, int64_t Lpad) const {                                   \
    if (nv == 1) {                                                                             \
      dgrad_##T##_1(dplane, off, K, w, g, Cout, Lpad);                                         \
    } else {                                                                                   \
      dgrad_##T##_2(dplane, off, K, w, g, Cout, Lpad);                                         \
    }                                                                                          \
  }
FD_BIND(float)
FD_BIND(double)
#undef FD_BIND

// Block width for a map: two vectors per block unless that pads a small map noticeably more.
template <typename T>
Kernels<T> pick_kernels(const ConvPoolDims& d) {
  const int64_t lanes = Vec<T>::kLanes;
  const int64_t WR = 2 * d.WP + d.KW - 1;
  const int64_t L = (2 * d.HP - 1) * WR + 2 * d.WP;
  const int64_t pad1 = (L + lanes - 1) / lanes * lanes;
  const int64_t pad2 = (L + 2 * lanes - 1) / (2 * lanes) * (2 * lanes);
  Kernels<T> k;
  k.wide = conv_pool_wide_kernels();
  k.nv = k.wide || (pad2 - pad1) * 16 > L ? 1 : 2;  // > ~6% more padding: single vectors
  k.JB = k.nv * lanes;  // the wide tiles take any multiple of one vector
  return k;
}

// One 2x2 window by ATen's max_pool2d rule (scan order; a later value wins if greater or NaN).
template <typename T>
FD_ALWAYS_INLINE void pool_one(const T* r0, const T* r1, bool relu, T* out, uint8_t* code) {
  const T v[4] = {r0[0], r0[1], r1[0], r1[1]};
  T best = v[0];
  int a = 0;
  for (int i = 1; i < 4; ++i) {
    if (v[i] > best || std::isnan(v[i])) {
      best = v[i];
      a = i;
    }
  }
  if (relu && !(best > T(0))) {
    *out = T(0);
    *code = kConvPoolInactive;
  } else {
    *out = best;
    *code = static_cast<uint8_t>(a);
  }
}

// The low byte of each lane of a code vector, stored as kLanes bytes (a byte shuffle: GCC
// vectorizes it in any clone, where a conversion is lowered to inserts).
template <typename T>
FD_ALWAYS_INLINE void store_codes(uint8_t* dst, const typename IVec<T>::type& c) {
  typedef uint8_t Bytes __attribute__((vector_size(64)));
  const Bytes b = (Bytes)c;
  if constexpr (sizeof(T) == 4) {
    typedef uint8_t Out __attribute__((vector_size(16)));
    const Out o = __builtin_shufflevector(b, b, 0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48,
                                          52, 56, 60);
    std::memcpy(dst, &o, sizeof(o));
  } else {
    typedef uint8_t Out __attribute__((vector_size(8)));
    const Out o = __builtin_shufflevector(b, b, 0, 8, 16, 24, 32, 40, 48, 56);
    std::memcpy(dst, &o, sizeof(o));
  }
}

// kLanes codes widened to one lane each.
template <typename T>
FD_ALWAYS_INLINE typename IVec<T>::type load_codes(const uint8_t* src) {
  using I = typename IVec<T>::type;
  typedef uint8_t In __attribute__((vector_size(Vec<T>::kLanes)));
  In v;
  std::memcpy(&v, src, sizeof(v));
  return __builtin_convertvector(v, I);
}

// 0, 1, ..., kLanes - 1.
template <typename T>
FD_ALWAYS_INLINE typename IVec<T>::type lane_index() {
  if constexpr (sizeof(T) == 4) {
    return typename IVec<T>::type{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  } else {
    return typename IVec<T>::type{0, 1, 2, 3, 4, 5, 6, 7};
  }
}

// All HP rows of 2x2 windows of one conv-output map (rows WR apart, L values): max, code and
// optional ReLU. Finite maps (checked with one vectorized sum) take the vector path: a vector
// of windows at a time, even/odd columns split by shuffles, the code of the first maximum by
// equality tests; others the scalar rule. Reads up to 2 * ceil(WP / lanes) * lanes columns of
// each row (the caller's buffer has that slack); writes only the WP outputs of each row.
template <typename T>
FD_ALWAYS_INLINE void pool_map_body(const T* __restrict__ o, int64_t WR, int64_t HP, int64_t WP,
                                    int64_t L_map, bool relu, T* __restrict__ out,
                                    uint8_t* __restrict__ code) {
  using V = typename Vec<T>::type;
  using I = typename IVec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc = V{};
  int64_t j = 0;
  for (; j + L <= L_map; j += L) acc += vload<V>(o + j);
  T total = 0;
  for (int i = 0; i < L; ++i) total += acc[i];
  for (; j < L_map; ++j) total += o[j];
  if (!std::isfinite(total)) {
    for (int64_t r = 0; r < HP; ++r)
      for (int64_t q = 0; q < WP; ++q)
        pool_one(o + 2 * r * WR + 2 * q, o + (2 * r + 1) * WR + 2 * q, relu, out + r * WP + q,
                 code + r * WP + q);
    return;
  }
  for (int64_t r = 0; r < HP; ++r) {
    const T* r0 = o + 2 * r * WR;
    const T* r1 = r0 + WR;
    for (int64_t q = 0; q < WP; q += L) {
      const int64_t n = std::min<int64_t>(L, WP - q);
      const V a0 = vload<V>(r0 + 2 * q), a1 = vload<V>(r0 + 2 * q + L);
      const V b0 = vload<V>(r1 + 2 * q), b1 = vload<V>(r1 + 2 * q + L);
      V e0, o0, e1, o1;
      if constexpr (L == 16) {
        e0 = __builtin_shufflevector(a0, a1, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                     30);
        o0 = __builtin_shufflevector(a0, a1, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                     29, 31);
        e1 = __builtin_shufflevector(b0, b1, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                     28, 30);
        o1 = __builtin_shufflevector(b0, b1, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27,
                                     29, 31);
      } else {
        e0 = __builtin_shufflevector(a0, a1, 0, 2, 4, 6, 8, 10, 12, 14);
        o0 = __builtin_shufflevector(a0, a1, 1, 3, 5, 7, 9, 11, 13, 15);
        e1 = __builtin_shufflevector(b0, b1, 0, 2, 4, 6, 8, 10, 12, 14);
        o1 = __builtin_shufflevector(b0, b1, 1, 3, 5, 7, 9, 11, 13, 15);
      }
      V m = o0 > e0 ? o0 : e0;
      m = e1 > m ? e1 : m;
      m = o1 > m ? o1 : m;
      I c = e0 == m ? I{} : (o0 == m ? I{} + 1 : (e1 == m ? I{} + 2 : I{} + 3));
      if (relu) {  // each comparison feeds one conditional (see conv_pool_channel_tiles.cpp)
        m = m > V{} ? m : V{};
        c = m > V{} ? c : I{} + kConvPoolInactive;
      }
      T* o_row = out + r * WP + q;
      uint8_t* c_row = code + r * WP + q;
      if ((r * WP + q) + L <= HP * WP) {  // whole vectors; what runs past n is a later row's
        vstore(o_row, m);
        store_codes<T>(c_row, c);
      } else {
        T vals[L];
        vstore(vals, m);
        for (int64_t i = 0; i < n; ++i) {
          o_row[i] = vals[i];
          c_row[i] = static_cast<uint8_t>(c[i]);
        }
      }
    }
  }
}
FD_CPU_CLONES void pool_map(const float* o, int64_t WR, int64_t HP, int64_t WP, int64_t L_map,
                            bool relu, float* out, uint8_t* code) {
  pool_map_body<float>(o, WR, HP, WP, L_map, relu, out, code);
}
FD_CPU_CLONES void pool_map(const double* o, int64_t WR, int64_t HP, int64_t WP, int64_t L_map,
                            bool relu, double* out, uint8_t* code) {
  pool_map_body<double>(o, WR, HP, WP, L_map, relu, out, code);
}

// The conv-output values at each window's coded position (0 where inactive), branch-free.
template <typename T>
FD_ALWAYS_INLINE void pick_map_body(const T* __restrict__ o, const uint8_t* __restrict__ code,
                                    int64_t WR, int64_t HP, int64_t WP, T* __restrict__ out) {
  for (int64_t r = 0; r < HP; ++r) {
    for (int64_t q = 0; q < WP; ++q) {
      const uint8_t a = code[r * WP + q];
      const bool on = a != kConvPoolInactive;
      const int64_t s = on ? (a >> 1) * WR + (a & 1) : 0;
      const T v = o[2 * r * WR + 2 * q + s];
      out[r * WP + q] = on ? v : T(0);
    }
  }
}
FD_CPU_CLONES void pick_map(const float* o, const uint8_t* code, int64_t WR, int64_t HP,
                            int64_t WP, float* out) {
  pick_map_body<float>(o, code, WR, HP, WP, out);
}
FD_CPU_CLONES void pick_map(const double* o, const uint8_t* code, int64_t WR, int64_t HP,
                            int64_t WP, double* out) {
  pick_map_body<double>(o, code, WR, HP, WP, out);
}

// Scatter one channel's pooled gradients into the flattened conv-output layout. Wide maps: a
// vector of windows at a time, each writing its four positions (the gradient at the coded
// one, zeros elsewhere; inactive windows all zeros), so nothing needs clearing (columns
// x >= 2*WP are only ever written with zeros; rows go in order, so a store running past its row
// is overwritten by the next one; needs 4 * lanes of slack after the map). Narrow maps: clear,
// then one store per window. Returns the sum (the bias gradient).
template <typename T>
FD_ALWAYS_INLINE T scatter_map_body(const T* __restrict__ grad, const uint8_t* __restrict__ code,
                                    int64_t WR, int64_t HP, int64_t WP, T* __restrict__ gd) {
  using V = typename Vec<T>::type;
  using I = typename IVec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  if (2 * WP < L) {  // narrow maps: clear the map, then one store per window, branch-free
    std::fill(gd, gd + (2 * HP - 1) * WR + 2 * WP, T(0));
    T sum = 0;
    for (int64_t r = 0; r < HP; ++r) {
      for (int64_t q = 0; q < WP; ++q) {
        const uint8_t a = code[r * WP + q];
        const bool on = a != kConvPoolInactive;
        const T gv = on ? grad[r * WP + q] : T(0);
        const int64_t s = on ? (a >> 1) * WR + (a & 1) : 0;  // inactive: 0 at its own window
        gd[2 * r * WR + 2 * q + s] = gv;
        sum += gv;
      }
    }
    return sum;
  }
  V total = V{};
  for (int64_t r = 0; r < HP; ++r) {
    T* row0 = gd + 2 * r * WR;
    T* row1 = row0 + WR;
    for (int64_t q = 0; q < WP; q += L) {
      const int64_t n = std::min<int64_t>(L, WP - q);
      V g;
      I c;
      if ((r * WP + q) + L <= HP * WP) {  // whole vectors inside the map, lanes >= n zeroed
        g = vload<V>(grad + r * WP + q);
        c = load_codes<T>(code + r * WP + q);
        using S = typename std::remove_reference<decltype(I{}[0])>::type;
        if (n < L) g = lane_index<T>() < I{} + static_cast<S>(n) ? g : V{};
      } else {
        T gbuf[L];
        typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type cbuf[L];
        for (int i = 0; i < L; ++i) {
          const bool in = i < n;
          const uint8_t a = in ? code[r * WP + q + i] : kConvPoolInactive;
          gbuf[i] = in ? grad[r * WP + q + i] : T(0);
          cbuf[i] = a;
        }
        g = vload<V>(gbuf);
        std::memcpy(&c, cbuf, sizeof(c));
      }
      g = c == I{} + kConvPoolInactive ? V{} : g;
      total += g;
      const V v0 = c == I{} ? g : V{};
      const V v1 = c == I{} + 1 ? g : V{};
      const V v2 = c == I{} + 2 ? g : V{};
      const V v3 = c == I{} + 3 ? g : V{};
      V lo0, hi0, lo1, hi1;
      if constexpr (L == 16) {
        lo0 = __builtin_shufflevector(v0, v1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7,
                                      23);
        hi0 = __builtin_shufflevector(v0, v1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14,
                                      30, 15, 31);
        lo1 = __builtin_shufflevector(v2, v3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7,
                                      23);
        hi1 = __builtin_shufflevector(v2, v3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14,
                                      30, 15, 31);
      } else {
        lo0 = __builtin_shufflevector(v0, v1, 0, 8, 1, 9, 2, 10, 3, 11);
        hi0 = __builtin_shufflevector(v0, v1, 4, 12, 5, 13, 6, 14, 7, 15);
        lo1 = __builtin_shufflevector(v2, v3, 0, 8, 1, 9, 2, 10, 3, 11);
        hi1 = __builtin_shufflevector(v2, v3, 4, 12, 5, 13, 6, 14, 7, 15);
      }
      vstore(row0 + 2 * q, lo0);
      vstore(row0 + 2 * q + L, hi0);
      vstore(row1 + 2 * q, lo1);
      vstore(row1 + 2 * q + L, hi1);
    }
  }
  T sum = 0;
  for (int i = 0; i < L; ++i) sum += total[i];
  return sum;
}
FD_CPU_CLONES float scatter_map(const float* grad, const uint8_t* code, int64_t WR, int64_t HP,
                                int64_t WP, float* gd) {
  return scatter_map_body<float>(grad, code, WR, HP, WP, gd);
}
FD_CPU_CLONES double scatter_map(const double* grad, const uint8_t* code, int64_t WR, int64_t HP,
                                 int64_t WP, double* gd) {
  return scatter_map_body<double>(grad, code, WR, HP, WP, gd);
}


// Images per parallel task: at least ~2^20 multiply-adds (~10 us at one core's rate), so that
// the ten-image inner steps still split across two threads while a parallel region (a few us)
// stays small next to each task.
int64_t image_grain(const ConvPoolDims& d, const Flat& f) {
  const int64_t per_image = d.B * d.Cout * d.K() * f.Lpad;  // multiply-adds
  constexpr int64_t kMinWork = int64_t(1) << 20;
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(per_image, 1));
}

// Weights per channel vector, transposed for the channel-vector kernels:
// wt[((bi * Cout / lanes + v) * K + k) * lanes + l] = w[(bi * Cout + v * lanes + l) * K + k].
template <typename T>
std::vector<T> tile_weights(const T* w, const ConvPoolDims& d) {
  constexpr int64_t lanes = Vec<T>::kLanes;
  const int64_t K = d.K();
  std::vector<T> wt(static_cast<size_t>(d.B * d.Cout * K));
  for (int64_t bc = 0; bc < d.B * d.Cout; ++bc) {
    const int64_t v = bc / lanes, l = bc % lanes;
    for (int64_t k = 0; k < K; ++k) wt[(v * K + k) * lanes + l] = w[bc * K + k];
  }
  return wt;
}

// ------------------------------------------------------------------------------- forward
template <typename T>
void forward_kernel(const ConvPoolParams& p) {
  const ConvPoolDims& d = p.d;
  const Kernels<T> kn = pick_kernels<T>(d);
  const Flat f = flat_geometry(d, kn.JB);
  const std::vector<int64_t> off = tap_offsets(d, f);
  const int64_t K = d.K();
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* b = static_cast<const T*>(p.b);
  T* out = static_cast<T*>(p.out);
  uint8_t* code = p.code_out;
  const int64_t pooled = d.HP * d.WP;
  constexpr int64_t lanes = Vec<T>::kLanes;
  const bool tiles = kn.wide && conv_pool_channel_tiles_fit(d.Cout, d.KW, lanes);
  const std::vector<T> wt = tiles ? tile_weights(w, d) : std::vector<T>();
  at::parallel_for(0, d.N, image_grain(d, f), [&](int64_t n0, int64_t n1) {
    std::vector<T> plane(static_cast<size_t>(f.buf));
    // Slack: the vectorized pooling reads whole vectors past the last window of a row.
    std::vector<T> conv(tiles ? 0 : static_cast<size_t>(kBlock * f.Lpad + 4 * lanes));
    std::vector<T> zeros(kBlock, T(0));
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t bi = 0; bi < d.B; ++bi) {
        const int64_t g = d.G == 1 ? 0 : bi;
        if (bi == 0 || d.G != 1) {
          fill_planes(plane.data(), x + (n * d.G + g) * d.Cin * d.H * d.W, d, f);
        }
        for (int64_t c0 = 0; tiles && c0 < d.Cout; c0 += lanes) {
          const int64_t base = ((n * d.B + bi) * d.Cout + c0) * pooled;
          conv_pool_tiles_forward(plane.data(), off.data(), K, f.WR, d.HP, d.WP,
                                  wt.data() + (bi * d.Cout + c0) * K,
                                  b != nullptr ? b + bi * d.Cout + c0 : nullptr, p.relu,
                                  out + base, code + base, pooled);
        }
        for (int64_t c0 = 0; !tiles && c0 < d.Cout; c0 += kBlock) {
          const int64_t nc = std::min<int64_t>(kBlock, d.Cout - c0);
          const T* wc = w + (bi * d.Cout + c0) * K;
          const T* bc = b != nullptr ? b + bi * d.Cout + c0 : zeros.data();
          kn.corr(plane.data(), off.data(), K, wc, bc, conv.data(), f.Lpad, nc);
          for (int64_t c = 0; c < nc; ++c) {
            const T* o = conv.data() + c * f.Lpad;
            const int64_t base = ((n * d.B + bi) * d.Cout + c0 + c) * pooled;
            pool_map(o, f.WR, d.HP, d.WP, f.L, p.relu, out + base, code + base);
          }
        }
      }
    }
  });
}

// -------------------------------------------------------------------------------- gather
template <typename T>
void gather_kernel(const ConvPoolParams& p) {
  // The dense vectorized correlation, then a pick at each coded position: cheaper than a
  // scalar dot product per position once a quarter of the positions or more are wanted.
  const ConvPoolDims& d = p.d;
  const Kernels<T> kn = pick_kernels<T>(d);
  const Flat f = flat_geometry(d, kn.JB);
  const std::vector<int64_t> off = tap_offsets(d, f);
  const int64_t K = d.K();
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* b = static_cast<const T*>(p.b);
  const uint8_t* code = p.code;
  T* out = static_cast<T*>(p.out);
  const int64_t pooled = d.HP * d.WP;
  constexpr int64_t lanes = Vec<T>::kLanes;
  const bool tiles = kn.wide && conv_pool_channel_tiles_fit(d.Cout, d.KW, lanes);
  const std::vector<T> wt = tiles ? tile_weights(w, d) : std::vector<T>();
  at::parallel_for(0, d.N, image_grain(d, f), [&](int64_t n0, int64_t n1) {
    std::vector<T> plane(static_cast<size_t>(f.buf));
    std::vector<T> conv(tiles ? 0 : static_cast<size_t>(kBlock * f.Lpad));
    std::vector<T> zeros(kBlock, T(0));
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t bi = 0; bi < d.B; ++bi) {
        const int64_t g = d.G == 1 ? 0 : bi;
        if (bi == 0 || d.G != 1) {
          fill_planes(plane.data(), x + (n * d.G + g) * d.Cin * d.H * d.W, d, f);
        }
        for (int64_t c0 = 0; tiles && c0 < d.Cout; c0 += lanes) {
          const int64_t base = ((n * d.B + bi) * d.Cout + c0) * pooled;
          conv_pool_tiles_gather(plane.data(), off.data(), K, f.WR, d.HP, d.WP,
                                 wt.data() + (bi * d.Cout + c0) * K,
                                 b != nullptr ? b + bi * d.Cout + c0 : nullptr, code + base,
                                 out + base, pooled);
        }
        for (int64_t c0 = 0; !tiles && c0 < d.Cout; c0 += kBlock) {
          const int64_t nc = std::min<int64_t>(kBlock, d.Cout - c0);
          const T* wc = w + (bi * d.Cout + c0) * K;
          const T* bc = b != nullptr ? b + bi * d.Cout + c0 : zeros.data();
          kn.corr(plane.data(), off.data(), K, wc, bc, conv.data(), f.Lpad, nc);
          for (int64_t c = 0; c < nc; ++c) {
            const T* o = conv.data() + c * f.Lpad;
            const int64_t base = ((n * d.B + bi) * d.Cout + c0 + c) * pooled;
            pick_map(o, code + base, f.WR, d.HP, d.WP, out + base);
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------ backward
constexpr int64_t kMaxChunks = 32;  // weight-gradient partial sums (fixed: deterministic)

// Copy the cropped padded planes of one image into dx ([Cin, H, W]).
// Row by row: the columns the padded planes hold are copied, the rest (input pixels no kept
// output reads) zeroed.
template <typename T>
void crop_planes(T* dst, const T* dplane, const ConvPoolDims& d, const Flat& f) {
  const int64_t kept = std::max<int64_t>(0, std::min<int64_t>(d.W, f.WR - d.pw));
  for (int64_t ci = 0; ci < d.Cin; ++ci) {
    for (int64_t iy = 0; iy < d.H; ++iy) {
      const int64_t r = iy + d.ph;
      T* out = dst + (ci * d.H + iy) * d.W;
      int64_t n = 0;
      if (r < f.HR) {
        std::memcpy(out, dplane + ci * f.plane + r * f.WR + d.pw, kept * sizeof(T));
        n = kept;
      }
      std::fill(out + n, out + d.W, T(0));
    }
  }
}

// Backward, and with p.grad_t set also its tangent (backward_tangent), in one pass over the
// images: each image's planes are filled and its gradients scattered once for both streams.
template <typename T>
void backward_kernel(const ConvPoolParams& p) {
  using acc_t = double;
  const ConvPoolDims& d = p.d;
  constexpr int64_t lanes = Vec<T>::kLanes;
  Kernels<T> kn = pick_kernels<T>(d);
  kn.nv = 1;  // the backward kernels have enough independent chains at one vector per block
  kn.JB = lanes;
  const Flat f = flat_geometry(d, kn.JB);
  const std::vector<int64_t> off = tap_offsets(d, f);
  const int64_t K = d.K();
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* grad = static_cast<const T*>(p.grad);
  const uint8_t* code = p.code;
  T* dx = static_cast<T*>(p.dx);
  const bool tan = p.grad_t != nullptr;
  const T* grad_t = static_cast<const T*>(p.grad_t);
  const T* x_t = tan ? static_cast<const T*>(p.x_t) : nullptr;
  T* dx_t = tan ? static_cast<T*>(p.dx_t) : nullptr;
  const bool need_w = p.dw != nullptr;
  const bool need_b = p.db != nullptr;
  const bool need_wt = tan && p.dw_t != nullptr;
  const bool need_bt = tan && p.db_t != nullptr;
  const int64_t pooled = d.HP * d.WP;
  const int64_t nw = d.B * d.Cout * K;
  const int64_t nb = d.B * d.Cout;
  const int64_t maps = tan ? 2 * d.Cout : d.Cout;  // scattered maps per image and net
  // The tangent's input gradient D(grad_t, w) + D(grad, w_t) runs as one input-gradient pass
  // over both scattered stacks [grad; grad_t] with the weights stacked to match, [w_t; w].
  std::vector<T> w_pair;
  if (dx_t != nullptr) {
    const T* wt = static_cast<const T*>(p.w_t);
    const int64_t per = d.Cout * K;
    w_pair.resize(static_cast<size_t>(2 * nw));
    for (int64_t bi = 0; bi < d.B; ++bi) {
      std::copy(wt + bi * per, wt + (bi + 1) * per, w_pair.begin() + 2 * bi * per);
      std::copy(w + bi * per, w + (bi + 1) * per, w_pair.begin() + (2 * bi + 1) * per);
    }
  }
  // One input channel, AVX-512: dplane[p] += sum_{c,k} w[c][k] * g[c][p - off[k]] as a dense
  // correlation over zero-margined copies of the scattered maps (each tap's loads feed eight
  // accumulators; no read-modify-write per tap). Up to 2 * Cout maps (the tangent's pair).
  const bool flipped = d.Cin == 1 && kn.wide && (dx != nullptr || dx_t != nullptr);
  const int64_t margin = (d.KH - 1) * f.WR + (d.KW - 1);
  const int64_t Lout = (f.plane + lanes - 1) / lanes * lanes;  // dplane positions written
  const int64_t stride = margin + std::max(Lout, f.Lpad) + lanes;
  std::vector<int64_t> flip_off;
  if (flipped) {
    for (int64_t c = 0; c < 2 * d.Cout; ++c)
      for (int64_t k = 0; k < K; ++k) flip_off.push_back(c * stride + margin - off[k]);
  }
  auto input_grad = [&](T* dplane, const T* wb, const T* g, int64_t cout, T* gpad) {
    if (flipped) {
      for (int64_t c = 0; c < cout; ++c) {
        std::memcpy(gpad + c * stride + margin, g + c * f.Lpad, f.Lpad * sizeof(T));
      }
      corr_add_one(gpad, flip_off.data(), cout * K, wb, dplane, Lout);
    } else if (d.Cin >= 2) {  // block input channels
      if (kn.wide) {
        dgrad_ci_wide(dplane, f.plane, f.WR, d.Cin, d.KH, d.KW, wb, g, cout, f.Lpad);
      } else {
        dgrad_ci(dplane, f.plane, f.WR, d.Cin, d.KH, d.KW, wb, g, cout, f.Lpad);
      }
    } else {  // one input channel: block output channels
      kn.dgrad(dplane, off.data(), K, wb, g, cout, f.Lpad);
    }
  };
  // Chunks fixed by N alone (deterministic for any thread count); >= 4 images per chunk so that
  // the per-chunk partials stay small next to the work, and two chunks from 8 images on, so
  // that the ten-image inner steps split across two threads. Each chunk sums its per-lane
  // weight-gradient partials (nw * lanes values, in a buffer of its thread) into nw values;
  // all chunks' partials together stay within ~32 MB.
  const int64_t lane_bytes = nw * lanes * static_cast<int64_t>(sizeof(T));
  const int64_t by_memory = (int64_t(32) << 20) / std::max<int64_t>(1, lane_bytes);
  const int64_t chunks =
      std::max<int64_t>(1, std::min<int64_t>({d.N / 4, kMaxChunks, by_memory}));
  const int64_t streams_w = int64_t(need_w) + int64_t(need_wt);
  const int64_t streams_b = int64_t(need_b) + int64_t(need_bt);
  std::vector<T> part_w(static_cast<size_t>(chunks * nw * streams_w), T(0));
  std::vector<T> part_b(static_cast<size_t>(chunks * nb * streams_b), T(0));
  T* part_dw = need_w ? part_w.data() : nullptr;
  T* part_dwt = need_wt ? part_w.data() + (need_w ? chunks * nw : 0) : nullptr;
  T* part_db = need_b ? part_b.data() : nullptr;
  T* part_dbt = need_bt ? part_b.data() + (need_b ? chunks * nb : 0) : nullptr;
  const int64_t work = tan ? 3 : 1;  // correlations per image, relative to one backward
  const int64_t grain = std::max<int64_t>(
      1, image_grain(d, f) * chunks / std::max<int64_t>(d.N * work, 1));
  // Weight gradients on the channel-vector kernels where they take the map: the scattered
  // gradients transposed to one channel vector per valid position, partials [K][lanes] per
  // channel vector (in lane_w's place).
  const bool tiles =
      (need_w || need_wt) && kn.wide && conv_pool_channel_tiles_fit(d.Cout, d.KW, lanes);
  const int64_t npos = 4 * d.HP * d.WP;
  const int64_t rows = d.Cin * d.KH;
  std::vector<int64_t> pos, row_off;
  if (tiles) {
    for (int64_t y = 0; y < 2 * d.HP; ++y)
      for (int64_t xx = 0; xx < 2 * d.WP; ++xx) pos.push_back(y * f.WR + xx);
    for (int64_t ci = 0; ci < d.Cin; ++ci)
      for (int64_t ky = 0; ky < d.KH; ++ky) row_off.push_back(ci * f.plane + ky * f.WR);
  }
  auto to_channel_vectors = [&](const T* stack, T* out) {
    for (int64_t v = 0; v < d.Cout / lanes; ++v)
      for (int64_t q = 0; q < npos; ++q)
        for (int64_t l = 0; l < lanes; ++l)
          out[(v * npos + q) * lanes + l] = stack[(v * lanes + l) * f.Lpad + pos[q]];
  };
  auto tile_wgrad = [&](const T* planes, const T* gs, T* dst) {
    for (int64_t v = 0; v < d.Cout / lanes; ++v) {
      conv_pool_tiles_wgrad(planes, row_off.data(), rows, d.KW, pos.data(), npos,
                            gs + v * npos * lanes, dst + v * K * lanes);
    }
  };
  at::parallel_for(0, chunks, grain, [&](int64_t ch0, int64_t ch1) {
    std::vector<T> gs(tiles ? static_cast<size_t>(npos * d.Cout) : 0);
    std::vector<T> gst(tiles && need_wt ? static_cast<size_t>(npos * d.Cout) : 0);
    const bool fill_x = need_w || need_wt;
    std::vector<T> plane(fill_x ? static_cast<size_t>(f.buf) : 0);
    std::vector<T> plane_t(need_wt && x_t != nullptr ? static_cast<size_t>(f.buf) : 0);
    std::vector<T> dplane(dx != nullptr ? static_cast<size_t>(f.buf) : 0);
    std::vector<T> dplane_t(dx_t != nullptr ? static_cast<size_t>(f.buf) : 0);
    // Margins zeroed once; input_grad copies each image's maps between them.
    std::vector<T> gpad(flipped ? static_cast<size_t>(2 * d.Cout * stride) : 0, T(0));
    std::vector<T> lane_w(need_w ? static_cast<size_t>(nw * lanes) : 0);
    std::vector<T> lane_wt(need_wt ? static_cast<size_t>(nw * lanes) : 0);
    // Zeroed once: the scatter rewrites every window position of every map, and zeros the
    // columns it runs over; 4 vectors of slack for its stores past the last row. Maps in
    // order: grad's Cout, then grad_t's.
    std::vector<T> gd(static_cast<size_t>(maps * f.Lpad + 4 * lanes), T(0));
    const T* gdt = gd.data() + d.Cout * f.Lpad;
    for (int64_t ch = ch0; ch < ch1; ++ch) {
      std::fill(lane_w.begin(), lane_w.end(), T(0));
      std::fill(lane_wt.begin(), lane_wt.end(), T(0));
      T* pb = part_db != nullptr ? part_db + ch * nb : nullptr;
      T* pbt = part_dbt != nullptr ? part_dbt + ch * nb : nullptr;
      for (int64_t n = ch * d.N / chunks; n < (ch + 1) * d.N / chunks; ++n) {
        for (int64_t bi = 0; bi < d.B; ++bi) {
          const int64_t g = d.G == 1 ? 0 : bi;
          const int64_t in_off = (n * d.G + g) * d.Cin * d.H * d.W;
          const bool first_of_input = bi == 0 || d.G != 1;
          if (first_of_input) {
            if (fill_x) fill_planes(plane.data(), x + in_off, d, f);
            if (!plane_t.empty()) fill_planes(plane_t.data(), x_t + in_off, d, f);
            if (dx != nullptr) std::fill(dplane.begin(), dplane.end(), T(0));
            if (dx_t != nullptr) std::fill(dplane_t.begin(), dplane_t.end(), T(0));
          }
          // Scatter the pooled gradients into the flattened conv-output layout.
          for (int64_t c = 0; c < d.Cout; ++c) {
            const int64_t base = ((n * d.B + bi) * d.Cout + c) * pooled;
            const T sb = scatter_map(grad + base, code + base, f.WR, d.HP, d.WP,
                                     gd.data() + c * f.Lpad);
            if (pb != nullptr) pb[bi * d.Cout + c] += sb;
          }
          for (int64_t c = 0; tan && c < d.Cout; ++c) {
            const int64_t base = ((n * d.B + bi) * d.Cout + c) * pooled;
            const T sb = scatter_map(grad_t + base, code + base, f.WR, d.HP, d.WP,
                                     gd.data() + (d.Cout + c) * f.Lpad);
            if (pbt != nullptr) pbt[bi * d.Cout + c] += sb;
          }
          const int64_t wo = bi * d.Cout * K;
          if (tiles) {
            if (need_w || !plane_t.empty()) to_channel_vectors(gd.data(), gs.data());
            if (need_wt) to_channel_vectors(gdt, gst.data());
            if (need_w) tile_wgrad(plane.data(), gs.data(), lane_w.data() + wo);
            if (need_wt) {
              tile_wgrad(plane.data(), gst.data(), lane_wt.data() + wo);
              if (!plane_t.empty()) tile_wgrad(plane_t.data(), gs.data(), lane_wt.data() + wo);
            }
          }
          if (need_w && !tiles) {
            wgrad_vec(kn.wide, plane.data(), off.data(), K, gd.data(), lane_w.data() + wo * lanes,
                      f.Lpad, d.Cout);
          }
          if (need_wt && !tiles) {
            T* dst = lane_wt.data() + wo * lanes;
            wgrad_vec(kn.wide, plane.data(), off.data(), K, gdt, dst, f.Lpad, d.Cout);
            if (!plane_t.empty()) {
              wgrad_vec(kn.wide, plane_t.data(), off.data(), K, gd.data(), dst, f.Lpad, d.Cout);
            }
          }
          if (dx != nullptr) input_grad(dplane.data(), w + wo, gd.data(), d.Cout, gpad.data());
          if (dx_t != nullptr) {
            input_grad(dplane_t.data(), w_pair.data() + 2 * wo, gd.data(), 2 * d.Cout,
                       gpad.data());
          }
          const bool last_of_input = d.G != 1 || bi == d.B - 1;
          if (last_of_input) {  // crop the padded planes into dx
            if (dx != nullptr) crop_planes(dx + in_off, dplane.data(), d, f);
            if (dx_t != nullptr) crop_planes(dx_t + in_off, dplane_t.data(), d, f);
          }
        }
      }
      // This chunk's per-lane partials summed across lanes (in lane order).
      auto lane_sum = [&](const std::vector<T>& lw, T* out) {
        if (tiles) {  // [B][Cout / lanes][K][lanes] -> [B][Cout][K]
          for (int64_t bi = 0; bi < d.B; ++bi)
            for (int64_t c = 0; c < d.Cout; ++c)
              for (int64_t k = 0; k < K; ++k) {
                const int64_t v = c / lanes, l = c % lanes;
                out[(bi * d.Cout + c) * K + k] =
                    lw[bi * d.Cout * K + (v * K + k) * lanes + l];
              }
          return;
        }
        for (int64_t i = 0; i < nw; ++i) {
          const T* v = lw.data() + i * lanes;
          T t = 0;
          for (int64_t l = 0; l < lanes; ++l) t += v[l];
          out[i] = t;
        }
      };
      if (need_w) lane_sum(lane_w, part_dw + ch * nw);
      if (need_wt) lane_sum(lane_wt, part_dwt + ch * nw);
    }
  });
  // Chunk partials added in chunk order (accumulated in double).
  auto chunk_sum = [&](const T* part, int64_t n, void* out) {
    T* dst = static_cast<T*>(out);
    for (int64_t i = 0; i < n; ++i) {
      acc_t s = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) s += part[ch * n + i];
      dst[i] = static_cast<T>(s);
    }
  };
  if (need_w) chunk_sum(part_dw, nw, p.dw);
  if (need_wt) chunk_sum(part_dwt, nw, p.dw_t);
  if (need_b) chunk_sum(part_db, nb, p.db);
  if (need_bt) chunk_sum(part_dbt, nb, p.db_t);
}

// ------------------------------------------------------------------------------ host code
std::tuple<at::Tensor, at::Tensor> conv_pool_forward_cpu(const at::Tensor& x, const at::Tensor& w,
                                                         const std::optional<at::Tensor>& b,
                                                         c10::IntArrayRef padding, bool relu) {
  constexpr const char* op = "fastdistill::conv_pool_forward";
  const ConvPoolDims d = conv_pool_dims(op, x, w, b, padding, c10::DeviceType::CPU);
  ConvPoolForwardCall c = prepare_conv_pool_forward(d, x, w, b, relu);
  if (!c.empty) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_pool_forward_cpu",
                               [&] { forward_kernel<scalar_t>(c.p); });
  }
  return std::make_tuple(c.out, c.code);
}

at::Tensor conv_pool_gather_cpu(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& b, const at::Tensor& code,
                                c10::IntArrayRef padding) {
  constexpr const char* op = "fastdistill::conv_pool_gather";
  const ConvPoolDims d = conv_pool_dims(op, x, w, b, padding, c10::DeviceType::CPU);
  ConvPoolGatherCall c = prepare_conv_pool_gather(op, d, x, w, b, code);
  if (!c.empty) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_pool_gather_cpu",
                               [&] { gather_kernel<scalar_t>(c.p); });
  }
  return c.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_pool_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, const at::Tensor& code,
    c10::IntArrayRef padding, std::array<bool, 3> mask) {
  constexpr const char* op = "fastdistill::conv_pool_backward";
  const ConvPoolDims d = conv_pool_dims(op, x, w, std::nullopt, padding, c10::DeviceType::CPU);
  ConvPoolBackwardCall c = prepare_conv_pool_backward(op, d, grad, x, w, code, mask);
  if (!c.empty) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_pool_backward_cpu",
                               [&] { backward_kernel<scalar_t>(c.p); });
  }
  return std::make_tuple(c.dx, c.dw, c.db);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
conv_pool_backward_tangent_cpu(const at::Tensor& grad, const at::Tensor& grad_t,
                               const at::Tensor& x, const std::optional<at::Tensor>& x_t,
                               const at::Tensor& w, const at::Tensor& w_t, const at::Tensor& code,
                               c10::IntArrayRef padding, std::array<bool, 4> mask) {
  constexpr const char* op = "fastdistill::conv_pool_backward_tangent";
  const ConvPoolDims d = conv_pool_dims(op, x, w, std::nullopt, padding, c10::DeviceType::CPU);
  ConvPoolBackwardTangentCall c =
      prepare_conv_pool_backward_tangent(op, d, grad, grad_t, x, x_t, w, w_t, code, mask);
  if (!c.empty) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_pool_backward_tangent_cpu",
                               [&] { backward_kernel<scalar_t>(c.p); });
  }
  return std::make_tuple(c.dx, c.dw, c.db, c.dx_t, c.dw_t, c.db_t);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("conv_pool_forward", &conv_pool_forward_cpu);
  m.impl("conv_pool_gather", &conv_pool_gather_cpu);
  m.impl("conv_pool_backward", &conv_pool_backward_cpu);
  m.impl("conv_pool_backward_tangent", &conv_pool_backward_tangent_cpu);
}

}  // namespace fastdistill
