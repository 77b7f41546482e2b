// Channel-vector kernels of the conv + 2x2 max pool ops (see conv_pool_channel_tiles.h).
//
// Forward and gather: a tile is Q pooled windows of one pooled row (4Q conv positions) for one
// channel vector; each tap costs one weight-vector load and 4Q broadcast multiply-adds. Weight
// gradient: a tile is R kernel rows x KW taps of one channel vector, accumulated over every
// valid position (one gradient-vector load and R*KW broadcast multiply-adds per position).
#include "fastdistill/conv_pool_channel_tiles.h"

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "fastdistill/conv_pool.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/cpu_vec.h"

namespace fastdistill {
namespace {

constexpr int kMaxWindows = 5;  // windows per forward tile: 20 accumulators
constexpr int kMaxRows5 = 5;    // kernel rows per weight-gradient tile for KW = 5: 25
constexpr int kMaxRows3 = 8;    // ... for KW = 3: 24

// acc[4*qi + 2*r + s] = bias + sum_k plane[off[k] + j0 + r*WR + 2*qi + s] * wt[k] (k in order).
template <typename T, int Q>
FD_ALWAYS_INLINE void window_convs(const T* __restrict__ plane, const int64_t* __restrict__ off,
                                   int64_t K, int64_t WR, int64_t j0, const T* __restrict__ wt,
                                   const typename Vec<T>::type& bias,
                                   typename Vec<T>::type (&a)[4 * Q]) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  for (int i = 0; i < 4 * Q; ++i) a[i] = bias;
  for (int64_t k = 0; k < K; ++k) {
    const T* s0 = plane + off[k] + j0;
    const T* s1 = s0 + WR;
    const V wv = vload<V>(wt + k * L);
    for (int q = 0; q < Q; ++q) {
      a[4 * q + 0] += s0[2 * q] * wv;
      a[4 * q + 1] += s0[2 * q + 1] * wv;
      a[4 * q + 2] += s1[2 * q] * wv;
      a[4 * q + 3] += s1[2 * q + 1] * wv;
    }
  }
}

// The 2x2 max of one window per lane by ATen's rule (scan order; a later value wins if greater
// or NaN), its code, and the optional ReLU (inactive where the maximum is not > 0), for windows
// without NaN: the first maximum is the first value equal to the maximum. Each comparison feeds
// one conditional: GCC turns a lane mask kept for two uses into scalar code per lane.
template <typename T>
FD_ALWAYS_INLINE void pool_window(const typename Vec<T>::type* v, bool relu,
                                  typename Vec<T>::type& best, typename IVec<T>::type& code) {
  using V = typename Vec<T>::type;
  using I = typename IVec<T>::type;
  V m = v[0];
  m = v[1] > m ? v[1] : m;
  m = v[2] > m ? v[2] : m;
  m = v[3] > m ? v[3] : m;
  I c = I{} + 3;
  c = v[2] == m ? I{} + 2 : c;
  c = v[1] == m ? I{} + 1 : c;
  c = v[0] == m ? I{} : c;
  if (relu) {
    m = m > V{} ? m : V{};
    c = m > V{} ? c : I{} + kConvPoolInactive;
  }
  best = m;
  code = c;
}

// The same rule for one lane, any values (windows with a NaN).
template <typename T>
FD_ALWAYS_INLINE void pool_lane(const T* v, bool relu, T& best, int& code) {
  T m = v[0];
  int a = 0;
  for (int i = 1; i < 4; ++i) {
    if (v[i] > m || v[i] != v[i]) {
      m = v[i];
      a = i;
    }
  }
  if (relu && !(m > T(0))) {
    m = T(0);
    a = kConvPoolInactive;
  }
  best = m;
  code = a;
}

// Whether any lane of n vectors is NaN (or their sum overflows to one: then the exact per-lane
// rule runs, which is right for any values).
template <typename T>
FD_ALWAYS_INLINE bool any_nan(const typename Vec<T>::type* v, int n) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V sum = v[0];
  for (int i = 1; i < n; ++i) sum += v[i];
  T lanes[L];
  vstore(lanes, sum);
  T total = 0;
  for (int l = 0; l < L; ++l) total += lanes[l];
  return total != total;
}

template <typename T>
FD_ALWAYS_INLINE typename Vec<T>::type bias_vector(const T* bias) {
  using V = typename Vec<T>::type;
  return bias != nullptr ? vload<V>(bias) : V{};
}

template <typename T, int Q>
FD_ALWAYS_INLINE void forward_windows(const T* plane, const int64_t* off, int64_t K, int64_t WR,
                                      int64_t py, int64_t q0, int64_t WP, const T* wt,
                                      const T* bias, bool relu, T* out, uint8_t* code,
                                      int64_t pooled) {
  using V = typename Vec<T>::type;
  using I = typename IVec<T>::type;
  using S = typename std::remove_reference<decltype(I{}[0])>::type;
  constexpr int L = Vec<T>::kLanes;
  V a[4 * Q];
  window_convs<T, Q>(plane, off, K, WR, 2 * py * WR + 2 * q0, wt, bias_vector(bias), a);
  const bool nan = any_nan<T>(a, 4 * Q);
  for (int q = 0; q < Q; ++q) {
    T vals[L];
    S codes[L];
    if (!nan) {
      V best;
      I c;
      pool_window<T>(a + 4 * q, relu, best, c);
      vstore(vals, best);
      vstore(codes, c);
    } else {
      T win[4][L];
      for (int i = 0; i < 4; ++i) vstore(win[i], a[4 * q + i]);
      for (int l = 0; l < L; ++l) {
        const T v[4] = {win[0][l], win[1][l], win[2][l], win[3][l]};
        int cl;
        pool_lane(v, relu, vals[l], cl);
        codes[l] = static_cast<S>(cl);
      }
    }
    const int64_t idx = py * WP + q0 + q;
    for (int l = 0; l < L; ++l) {
      out[l * pooled + idx] = vals[l];
      code[l * pooled + idx] = static_cast<uint8_t>(codes[l]);
    }
  }
}

template <typename T, int Q>
FD_ALWAYS_INLINE void gather_windows(const T* plane, const int64_t* off, int64_t K, int64_t WR,
                                     int64_t py, int64_t q0, int64_t WP, const T* wt,
                                     const T* bias, const uint8_t* code, T* out,
                                     int64_t pooled) {
  using V = typename Vec<T>::type;
  using I = typename IVec<T>::type;
  using S = typename std::remove_reference<decltype(I{}[0])>::type;
  constexpr int L = Vec<T>::kLanes;
  V a[4 * Q];
  window_convs<T, Q>(plane, off, K, WR, 2 * py * WR + 2 * q0, wt, bias_vector(bias), a);
  for (int q = 0; q < Q; ++q) {
    const int64_t idx = py * WP + q0 + q;
    S cb[L];
    for (int l = 0; l < L; ++l) cb[l] = static_cast<S>(code[l * pooled + idx]);
    const I c = vload<I>(cb);
    V v = V{};
    for (int i = 0; i < 4; ++i) v = c == I{} + i ? a[4 * q + i] : v;
    T vals[L];
    vstore(vals, v);
    for (int l = 0; l < L; ++l) out[l * pooled + idx] = vals[l];
  }
}

// Every window of every pooled row: tiles of kMaxWindows, then the row's remainder. (A switch,
// not a lambda: a lambda's body would not get the caller's target clones.)
#define FD_FOR_WINDOW_TILES(TILE)                                   \
  for (int64_t py = 0; py < HP; ++py) {                             \
    int64_t q0 = 0;                                                 \
    for (; q0 + kMaxWindows <= WP; q0 += kMaxWindows) TILE(kMaxWindows); \
    switch (WP - q0) {                                              \
      case 4: TILE(4); break;                                       \
      case 3: TILE(3); break;                                       \
      case 2: TILE(2); break;                                       \
      case 1: TILE(1); break;                                       \
      default: break;                                               \
    }                                                               \
  }

template <typename T>
FD_ALWAYS_INLINE void forward_body(const T* plane, const int64_t* off, int64_t K, int64_t WR,
                                   int64_t HP, int64_t WP, const T* wt, const T* bias, bool relu,
                                   T* out, uint8_t* code, int64_t pooled) {
#define FD_TILE(Q) \
  forward_windows<T, Q>(plane, off, K, WR, py, q0, WP, wt, bias, relu, out, code, pooled)
  FD_FOR_WINDOW_TILES(FD_TILE)
#undef FD_TILE
}

template <typename T>
FD_ALWAYS_INLINE void gather_body(const T* plane, const int64_t* off, int64_t K, int64_t WR,
                                  int64_t HP, int64_t WP, const T* wt, const T* bias,
                                  const uint8_t* code, T* out, int64_t pooled) {
#define FD_TILE(Q) \
  gather_windows<T, Q>(plane, off, K, WR, py, q0, WP, wt, bias, code, out, pooled)
  FD_FOR_WINDOW_TILES(FD_TILE)
#undef FD_TILE
}
#undef FD_FOR_WINDOW_TILES

// R kernel rows of S taps: acc[r][t] (tap r*S + t) += plane[pos[p] + row_off[r] + t] * gs[p].
template <typename T, int R, int S>
FD_ALWAYS_INLINE void wgrad_rows(const T* __restrict__ plane, const int64_t* __restrict__ row_off,
                                 const int64_t* __restrict__ pos, int64_t npos,
                                 const T* __restrict__ gs, T* __restrict__ dwt) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[R][S];
  int64_t ro[R];
  for (int r = 0; r < R; ++r) {
    ro[r] = row_off[r];
    for (int t = 0; t < S; ++t) acc[r][t] = vload<V>(dwt + (r * S + t) * L);
  }
  for (int64_t p = 0; p < npos; ++p) {
    const V gv = vload<V>(gs + p * L);
    const T* base = plane + pos[p];
    for (int r = 0; r < R; ++r) {
      const T* s = base + ro[r];
      for (int t = 0; t < S; ++t) acc[r][t] += s[t] * gv;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < S; ++t) vstore(dwt + (r * S + t) * L, acc[r][t]);
}

template <typename T, int S, int RMAX>
FD_ALWAYS_INLINE void wgrad_width(const T* plane, const int64_t* row_off, int64_t rows,
                                  const int64_t* pos, int64_t npos, const T* gs, T* dwt) {
  constexpr int L = Vec<T>::kLanes;
  int64_t r = 0;
  for (; r + RMAX <= rows; r += RMAX)
    wgrad_rows<T, RMAX, S>(plane, row_off + r, pos, npos, gs, dwt + r * S * L);
  for (; r + 2 <= rows; r += 2)
    wgrad_rows<T, 2, S>(plane, row_off + r, pos, npos, gs, dwt + r * S * L);
  for (; r < rows; ++r) wgrad_rows<T, 1, S>(plane, row_off + r, pos, npos, gs, dwt + r * S * L);
}

template <typename T>
FD_ALWAYS_INLINE void wgrad_body(const T* plane, const int64_t* row_off, int64_t rows,
                                 int64_t KW, const int64_t* pos, int64_t npos, const T* gs,
                                 T* dwt) {
  if (KW == 5) {
    wgrad_width<T, 5, kMaxRows5>(plane, row_off, rows, pos, npos, gs, dwt);
  } else {
    wgrad_width<T, 3, kMaxRows3>(plane, row_off, rows, pos, npos, gs, dwt);
  }
}

}  // namespace

bool conv_pool_wide_kernels() {
  // FASTDISTILL_CONV_TILES=0 turns them off (read per call, so that tests and benchmarks can
  // compare both paths in one process).
  const char* env = std::getenv("FASTDISTILL_CONV_TILES");
  if (env != nullptr && env[0] == '0') return false;
  return cpu_has_avx512();
}

bool conv_pool_channel_tiles_fit(int64_t Cout, int64_t KW, int64_t lanes) {
  return Cout % lanes == 0 && (KW == 3 || KW == 5);
}

#define FD_TILE_KERNELS(T)                                                                     \
  FD_CPU_CLONES void conv_pool_tiles_forward(const T* plane, const int64_t* off, int64_t K,    \
                                             int64_t WR, int64_t HP, int64_t WP, const T* wt,  \
                                             const T* bias, bool relu, T* out, uint8_t* code,  \
                                             int64_t pooled) {                                 \
    forward_body<T>(plane, off, K, WR, HP, WP, wt, bias, relu, out, code, pooled);             \
  }                                                                                            \
  FD_CPU_CLONES void conv_pool_tiles_gather(const T* plane, const int64_t* off, int64_t K,     \
                                            int64_t WR, int64_t HP, int64_t WP, const T* wt,   \
                                            const T* bias, const uint8_t* code, T* out,        \
                                            int64_t pooled) {                                  \
    gather_body<T>(plane, off, K, WR, HP, WP, wt, bias, code, out, pooled);                    \
  }                                                                                            \
  FD_CPU_CLONES void conv_pool_tiles_wgrad(const T* plane, const int64_t* row_off,             \
                                           int64_t rows, int64_t KW, const int64_t* pos,       \
                                           int64_t npos, const T* gs, T* dwt) {                \
    wgrad_body<T>(plane, row_off, rows, KW, pos, npos, gs, dwt);                               \
  }
FD_TILE_KERNELS(float)
FD_TILE_KERNELS(double)
#undef FD_TILE_KERNELS

}  // namespace fastdistill
