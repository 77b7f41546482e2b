// Row math of fastdistill::soft_label_loss, written once for the CPU kernels (one thread per
// row) and the CUDA kernels (a warp or a block per row). No torch headers: included by the .cu
// files.
//
// A row policy R says which columns the calling thread visits (k = R::lane(); k < K;
// k += R::stride()) and all-reduces partial sums/maxima over the threads of the row, so that
// every thread ends with the same value (SerialRow: one thread, no reduction). acc_t is the
// arithmetic type, the storage type (float32 rows are computed in float, with a log-sum-exp
// shifted by the row maximum, as ATen's log_softmax does). Each op reads a row a few times
// (max, sum of exponentials, dot products, write-out) while it is in cache.
//
// Notation, per row: z logits, y labels, m = max z, lse = m + log sum exp(z - m),
// a_k = lse - z_k = -log_softmax(z)_k (computed as (m - z_k) + log s), p = softmax(z),
// S = sum y, t = softmax(y), g the upstream gradient, u / w the tangents of the logit / label
// gradient. Formulas:
//   soft     loss = <y, a>              dz = g (S p - y)       dy = g a
//            dd_g = S <p,u> - <y,u> + <a,w>
//            dd_z = g (S p (u - <p,u>) + p sum(w) - w)         dd_y = g (<p,u> - u)
//   softmax  loss = <t, a>              dz = g (p - t)         dy = g t (a - <t,a>)
//            dd_g = <p,u> - <t,u> + <t (a - <t,a>), w>
//            dd_z = g (p (u - <p,u>) - t (w - <t,w>))
//            dd_y = g (-t (u - <t,u>) + t (c b - <t, c b>)),  b = a - <t,a>, c = w - <t,w>
//   binary   loss = softplus(z) - y z   dz = g (sigmoid(z) - y)   dy = -g z
//            dd_g = (sigmoid(z) - y) u - z w
//            dd_z = g (sigmoid(z) sigmoid(-z) u - w)          dd_y = -g u
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastdistill/math.h"
#include "fastdistill/soft_label_loss.h"

// Column loops: FD_FOR_COLS((clause), body) runs `body` for the calling thread's columns k of a
// row (k = R::lane(); k < K; k += R::stride()). On the CPU the columns up to R::simd_end(K), a
// multiple of SimdCols<acc_t> (one AVX-512 register), run under `#pragma omp simd clause` so
// that the compiler vectorizes them, reductions included (order fixed for a given binary), and
// the few remaining columns in a plain loop (omp simd remainder iterations are several times
// slower than scalar code). On CUDA simd_end(K) = K and the pragma is empty. The enclosing
// function defines k0, ks, kv with FD_ROW_COLS.
#if !defined(__CUDACC__) && defined(_OPENMP)
#define FD_PRAGMA(x) _Pragma(#x)
#define FD_SIMD_FOR(...) FD_PRAGMA(omp simd simdlen(SimdCols<acc_t>::value) __VA_ARGS__)
#else
#define FD_SIMD_FOR(...)
#endif
#define FD_FOR_COLS(CLAUSE, ...)                  \
  FD_SIMD_FOR CLAUSE                              \
  for (int64_t k = k0; k < kv; k += ks) {         \
    __VA_ARGS__                                   \
  }                                               \
  for (int64_t k = kv; k < K; k += ks) {          \
    __VA_ARGS__                                   \
  }
#define FD_ROW_COLS(R, K)                  \
  const int64_t k0 = R::lane();            \
  const int64_t ks = R::stride();          \
  const int64_t kv = R::template simd_end<acc_t>(K)

// Row functions: always inlined on the CPU, so that they are compiled (and vectorized) for the
// AVX-512/AVX2 clones of the kernels' entry points (FD_CPU_CLONES) that call them.
#if defined(__CUDACC__)
#define FD_ROW_FN FD_HOST_DEVICE
#elif defined(__GNUC__)
#define FD_ROW_FN inline __attribute__((always_inline))
#else
#define FD_ROW_FN inline
#endif

namespace fastdistill {
namespace slrow {

#if !defined(__CUDACC__)
template <typename To, typename From>
FD_ROW_FN To bits_as(From x) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To y;
  std::memcpy(&y, &x, sizeof(y));
  return y;
}

// exp(x) for the CPU kernels, written so that the loops around it vectorize (libm's exp is a
// call the compiler cannot vectorize, and the kernels evaluate one or two per element):
// x = n ln2 + r (Cody-Waite, |r| <= ln2 / 2), exp(r) by its degree-13 Taylor polynomial
// (truncation < 5e-18 relative), times 2^n built from the exponent bits. Within 1 ulp of
// libm on [-708, 709]; 0 below (no subnormal results; -inf gives 0), +inf above, NaN for NaN.
// The out-of-range cases are selected with integer bit masks: floating-point selects behind a
// comparison are not if-converted (so not vectorized) by GCC for AVX2 under -ftrapping-math.
FD_ROW_FN double exp_cpu(double x) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // 32 leading bits of ln 2
  constexpr double kLn2Lo = 1.90821492927058770002e-10;  // ln 2 - kLn2Hi
  constexpr double kShift = 6755399441055744.0;           // 1.5 * 2^52: x + kShift rounds x
  constexpr double kMin = -708.0;
  constexpr double kMax = 709.0;
  const int64_t low = -int64_t(x < kMin);  // all ones or zero
  const int64_t high = -int64_t(x > kMax);
  const double xc = bits_as<double>((bits_as<int64_t>(x) & ~(low | high)) |
                                    (bits_as<int64_t>(kMin) & low) |
                                    (bits_as<int64_t>(kMax) & high));
  const double t = xc * kLog2e + kShift;
  const double n = t - kShift;  // round(x / ln 2)
  const double r = (xc - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^n (n in [-1022, 1023]); 0 below the range, +inf above.
  const int64_t scale = ((bits_as<int64_t>(t) - bits_as<int64_t>(kShift)) + 1023) << 52;
  const int64_t inf = bits_as<int64_t>(double(INFINITY));
  return p * bits_as<double>((scale & ~(low | high)) | (inf & high));
}

// The same in float: degree-7 polynomial (truncation < 6e-9 relative), within 1 ulp of libm's
// expf on [-87, 88]; 0 below, +inf above.
FD_ROW_FN float exp_cpu(float x) {
  constexpr float kLog2e = 1.44269504f;
  constexpr float kLn2Hi = 0.693359375f;  // 9 leading bits of ln 2
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  constexpr float kMin = -87.0f;
  constexpr float kMax = 88.0f;
  const int32_t low = -int32_t(x < kMin);
  const int32_t high = -int32_t(x > kMax);
  const float xc = bits_as<float>((bits_as<int32_t>(x) & ~(low | high)) |
                                  (bits_as<int32_t>(kMin) & low) | (bits_as<int32_t>(kMax) & high));
  const float t = xc * kLog2e + kShift;
  const float n = t - kShift;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t scale = ((bits_as<int32_t>(t) - bits_as<int32_t>(kShift)) + 127) << 23;
  const int32_t inf = bits_as<int32_t>(float(INFINITY));
  return p * bits_as<float>((scale & ~(low | high)) | (inf & high));
}
#endif

FD_ROW_FN float exp_(float x) {
#if defined(__CUDACC__)
  return ::expf(x);
#else
  return exp_cpu(x);
#endif
}
FD_ROW_FN double exp_(double x) {
#if defined(__CUDACC__)
  return ::exp(x);
#else
  return exp_cpu(x);
#endif
}
FD_HOST_DEVICE float log_(float x) { return ::logf(x); }
FD_HOST_DEVICE double log_(double x) { return ::log(x); }
FD_HOST_DEVICE bool isfinite_(float x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}
FD_HOST_DEVICE bool isfinite_(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// Columns per SIMD step on the CPU: one AVX-512 register (two AVX2 registers).
template <typename acc_t>
struct SimdCols {
  static constexpr int64_t value = 64 / sizeof(acc_t);
};

// One thread per row.
struct SerialRow {
  FD_ROW_FN static int64_t lane() { return 0; }
  FD_ROW_FN static int64_t stride() { return 1; }
  template <typename acc_t>
  FD_ROW_FN static int64_t simd_end(int64_t K) {
    return K - K % SimdCols<acc_t>::value;
  }
  template <typename T>
  FD_ROW_FN static T sum(T x) {
    return x;
  }
  template <typename T>
  FD_ROW_FN static T max(T x) {
    return x;
  }
};

template <typename acc_t>
FD_ROW_FN acc_t max_(acc_t a, acc_t b) {
  return b > a ? b : a;
}

// Row maximum shifted for log-sum-exp: a row without a finite maximum (all -inf, +inf or NaN)
// uses 0, as at::logsumexp does, so that infinities and NaN propagate instead of inf - inf.
template <typename R, typename acc_t, typename T>
FD_ROW_FN acc_t row_shift(const T* x, int64_t K) {
  FD_ROW_COLS(R, K);
  acc_t m = acc_t(-INFINITY);
  FD_FOR_COLS((reduction(max : m)), m = max_(m, acc_t(x[k]));)
  m = R::max(m);
  return isfinite_(m) ? m : acc_t(0);
}

// Logits statistics: a_k = (m - z_k) + log_s = -log_softmax(z)_k, p_k = exp(-a_k).
template <typename acc_t>
struct Lse {
  acc_t m;
  acc_t log_s;
  FD_ROW_FN acc_t a(acc_t z) const { return (m - z) + log_s; }
};

template <typename R, typename acc_t, typename T>
FD_ROW_FN Lse<acc_t> row_lse(const T* z, int64_t K) {
  FD_ROW_COLS(R, K);
  Lse<acc_t> r;
  r.m = row_shift<R, acc_t>(z, K);
  const acc_t m = r.m;
  acc_t s = 0;
  FD_FOR_COLS((reduction(+ : s)), s += exp_(acc_t(z[k]) - m);)
  r.log_s = log_(R::sum(s));
  return r;
}

// Target statistics of the softmax kind: t_k = exp(y_k - m) / s, as a product with 1 / s (the
// passes recompute t_k, and a division costs several multiplications).
template <typename acc_t>
struct Softmax {
  acc_t m;
  acc_t inv_s;
  FD_ROW_FN acc_t t(acc_t y) const { return exp_(y - m) * inv_s; }
};

template <typename R, typename acc_t, typename T>
FD_ROW_FN Softmax<acc_t> row_softmax(const T* y, int64_t K) {
  FD_ROW_COLS(R, K);
  Softmax<acc_t> r;
  r.m = row_shift<R, acc_t>(y, K);
  const acc_t m = r.m;
  acc_t s = 0;
  FD_FOR_COLS((reduction(+ : s)), s += exp_(acc_t(y[k]) - m);)
  r.inv_s = acc_t(1) / R::sum(s);
  return r;
}

// ------------------------------------------------------------------------------- forward
template <typename R, typename acc_t, typename T>
FD_ROW_FN acc_t forward_row(const T* z, const T* y, int64_t K, LabelKind kind) {
  if (kind == LabelKind::kBinary) {
    const acc_t zz = acc_t(z[0]);
    return softplus<acc_t>(zz) - acc_t(y[0]) * zz;
  }
  FD_ROW_COLS(R, K);
  const Lse<acc_t> lse = row_lse<R, acc_t>(z, K);
  acc_t acc = 0;
  if (kind == LabelKind::kSoft) {
    FD_FOR_COLS((reduction(+ : acc)), acc += acc_t(y[k]) * lse.a(acc_t(z[k]));)
    return R::sum(acc);
  }
  const Softmax<acc_t> sm = row_softmax<R, acc_t>(y, K);
  FD_FOR_COLS((reduction(+ : acc)), acc += sm.t(acc_t(y[k])) * lse.a(acc_t(z[k]));)
  return R::sum(acc);
}

// ------------------------------------------------------------------------------ backward
// gz[k] = g dl/dz_k, gy = g dl/dy (gy[k] for soft/softmax, gy[0] for binary).
template <typename R, typename acc_t, typename T>
FD_ROW_FN void backward_row(acc_t g, const T* z, const T* y, int64_t K, LabelKind kind, T* gz,
                            T* gy) {
  if (kind == LabelKind::kBinary) {
    const acc_t zz = acc_t(z[0]);
    if (R::lane() == 0) {
      gz[0] = T(g * (sigmoid<acc_t>(zz) - acc_t(y[0])));
      gy[0] = T(-g * zz);
    }
    return;
  }
  FD_ROW_COLS(R, K);
  const Lse<acc_t> lse = row_lse<R, acc_t>(z, K);
  if (kind == LabelKind::kSoft) {
    acc_t S = 0;
    FD_FOR_COLS((reduction(+ : S)), S += acc_t(y[k]);)
    S = R::sum(S);
    FD_FOR_COLS((), {
      const acc_t a = lse.a(acc_t(z[k]));
      gz[k] = T(g * (S * exp_(-a) - acc_t(y[k])));
      gy[k] = T(g * a);
    })
    return;
  }
  const Softmax<acc_t> sm = row_softmax<R, acc_t>(y, K);
  acc_t ta = 0;
  FD_FOR_COLS((reduction(+ : ta)), ta += sm.t(acc_t(y[k])) * lse.a(acc_t(z[k]));)
  ta = R::sum(ta);
  FD_FOR_COLS((), {
    const acc_t a = lse.a(acc_t(z[k]));
    const acc_t t = sm.t(acc_t(y[k]));
    gz[k] = T(g * (exp_(-a) - t));
    gy[k] = T(g * (t * (a - ta)));
  })
}

// ----------------------------------------------------------------------- double backward
// u, w: tangents of the logit and label gradients (w like y). Writes ddz[k], ddy (like y) and
// returns d/dg (the same value in every thread of the row).
template <typename R, typename acc_t, typename T>
FD_ROW_FN acc_t double_backward_row(acc_t g, const T* z, const T* y, const T* u, const T* w,
                                    int64_t K, LabelKind kind, T* ddz, T* ddy) {
  if (kind == LabelKind::kBinary) {
    const acc_t zz = acc_t(z[0]);
    const acc_t uu = acc_t(u[0]);
    const acc_t ww = acc_t(w[0]);
    const acc_t sp = sigmoid<acc_t>(zz);
    if (R::lane() == 0) {
      ddz[0] = T(g * (sp * sigmoid<acc_t>(-zz) * uu - ww));
      ddy[0] = T(-g * uu);
    }
    return (sp - acc_t(y[0])) * uu - zz * ww;
  }
  FD_ROW_COLS(R, K);
  const Lse<acc_t> lse = row_lse<R, acc_t>(z, K);
  if (kind == LabelKind::kSoft) {
    acc_t S = 0, yu = 0, pu = 0, aw = 0, sw = 0;
    FD_FOR_COLS((reduction(+ : S, yu, pu, aw, sw)), {
      const acc_t a = lse.a(acc_t(z[k]));
      const acc_t uk = acc_t(u[k]);
      const acc_t wk = acc_t(w[k]);
      const acc_t yk = acc_t(y[k]);
      S += yk;
      yu += yk * uk;
      pu += exp_(-a) * uk;
      aw += a * wk;
      sw += wk;
    })
    S = R::sum(S);
    yu = R::sum(yu);
    pu = R::sum(pu);
    aw = R::sum(aw);
    sw = R::sum(sw);
    FD_FOR_COLS((), {
      const acc_t p = exp_(-lse.a(acc_t(z[k])));
      const acc_t uk = acc_t(u[k]);
      ddz[k] = T(g * (S * p * (uk - pu) + p * sw - acc_t(w[k])));
      ddy[k] = T(g * (pu - uk));
    })
    return S * pu - yu + aw;
  }
  const Softmax<acc_t> sm = row_softmax<R, acc_t>(y, K);
  acc_t pu = 0, tu = 0, tw = 0, ta = 0;
  FD_FOR_COLS((reduction(+ : pu, tu, tw, ta)), {
    const acc_t a = lse.a(acc_t(z[k]));
    const acc_t t = sm.t(acc_t(y[k]));
    const acc_t uk = acc_t(u[k]);
    pu += exp_(-a) * uk;
    tu += t * uk;
    tw += t * acc_t(w[k]);
    ta += t * a;
  })
  pu = R::sum(pu);
  tu = R::sum(tu);
  tw = R::sum(tw);
  ta = R::sum(ta);
  acc_t tcb = 0, tbw = 0;  // <t, c b>, <t b, w>
  FD_FOR_COLS((reduction(+ : tcb, tbw)), {
    const acc_t t = sm.t(acc_t(y[k]));
    const acc_t b = lse.a(acc_t(z[k])) - ta;
    const acc_t wk = acc_t(w[k]);
    tcb += t * (wk - tw) * b;
    tbw += t * b * wk;
  })
  tcb = R::sum(tcb);
  tbw = R::sum(tbw);
  FD_FOR_COLS((), {
    const acc_t a = lse.a(acc_t(z[k]));
    const acc_t t = sm.t(acc_t(y[k]));
    const acc_t uk = acc_t(u[k]);
    const acc_t c = acc_t(w[k]) - tw;
    ddz[k] = T(g * (exp_(-a) * (uk - pu) - t * c));
    ddy[k] = T(g * (t * (c * (a - ta) - tcb) - t * (uk - tu)));
  })
  return pu - tu + tbw;
}

}  // namespace slrow
}  // namespace fastdistill
