// Register-blocked small batched GEMMs for the fused inner step (see small_gemm.h).
//
// Products are tiled into blocks of up to 4 rows of `out`; each block is computed by one thread
// in a fixed order (k ascending, lanes reduced in order), so results do not depend on the
// thread count. Threads split the (batch, row block) pairs only when a call has enough work to
// pay for the fork.
#include "fastdistill/small_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fastdistill/checks.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/cpu_vec.h"

namespace fastdistill {
namespace {

// Above this many multiply-adds the library GEMM (blocked for caches) may be faster. Measured on
// a Zen 5 core (MKL takes its AVX2 path there): LeNet's real-batch layers (1024 x 400 x 120 and
// transposes, 49M multiply-adds) run 1.5-2x faster here than in MKL at 1 and 2 threads.
constexpr int64_t kMaxMacs = int64_t(1) << 26;
// Multiply-adds a thread should get before a call is split across threads.
constexpr int64_t kMacsPerTask = int64_t(1) << 16;
constexpr int kRows = 4;  // rows of out per block

// One batch entry's operands as raw pointers and element strides.
template <typename T>
struct Operands {
  T* c;
  int64_t scm;  // out: row stride (unit column stride)
  const T* a;
  int64_t sam, sak;
  const T* m;
  int64_t smk, smn;
  const T* bias;  // [N] with unit stride, or nullptr
  int64_t M, N, K;
  bool accumulate;
  // Zero-padded copies of m's last columns / k's, packed once per batch entry (pack_tail):
  // broadcast kernel, N % L != 0: K x L tail columns, then the L-padded bias tail;
  // dot kernel, K % L != 0: N x L, each column's last K % L.
  const T* m_tail = nullptr;
};

// Pack o's tail (see Operands::m_tail) into buf; o.m_tail is left null when there is none.
template <typename T>
void pack_tail(Operands<T>& o, bool dot, std::vector<T>& buf) {
  constexpr int L = Vec<T>::kLanes;
  if (dot) {
    const int64_t k0 = o.K / L * L, kt = o.K - k0;
    if (kt == 0) return;
    buf.assign(static_cast<size_t>(o.N * L), T(0));
    for (int64_t n = 0; n < o.N; ++n)
      for (int64_t i = 0; i < kt; ++i) buf[n * L + i] = o.m[n * o.smn + k0 + i];
  } else {
    const int64_t n0 = o.N / L * L, nt = o.N - n0;
    if (nt == 0) return;
    buf.assign(static_cast<size_t>((o.K + 1) * L), T(0));
    for (int64_t k = 0; k < o.K; ++k)
      for (int64_t j = 0; j < nt; ++j) buf[k * L + j] = o.m[k * o.smk + n0 + j];
    if (o.bias)
      for (int64_t j = 0; j < nt; ++j) buf[o.K * L + j] = o.bias[n0 + j];
  }
  o.m_tail = buf.data();
}

// ------------------------------------------------------------------ broadcast kernel
// out[r, n0:n0+NV*L] over rows r0..r0+MR: for each k, A[r, k] times the row m[k, n0:...].
template <typename T, int MR, int NV>
FD_ALWAYS_INLINE void bcast_block(const Operands<T>& o, int64_t r0, const T* mcol, int64_t smk,
                                  T* c, int64_t scm, const T* bias) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) {
      if (o.accumulate) {
        acc[r][j] = vload<V>(c + r * scm + j * L);
      } else if (bias != nullptr) {
        acc[r][j] = vload<V>(bias + j * L);
      } else {
        acc[r][j] = V{};
      }
    }
  const T* arow = o.a + r0 * o.sam;
  for (int64_t k = 0; k < o.K; ++k) {
    V mv[NV];
    for (int j = 0; j < NV; ++j) mv[j] = vload<V>(mcol + k * smk + j * L);
    for (int r = 0; r < MR; ++r) {
      const T s = arow[r * o.sam + k * o.sak];
      for (int j = 0; j < NV; ++j) acc[r][j] += mv[j] * s;
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) vstore(c + r * scm + j * L, acc[r][j]);
}

template <typename T, int NV>
FD_ALWAYS_INLINE void bcast_rows(const Operands<T>& o, int64_t r0, int mr, const T* mcol,
                                 int64_t smk, T* c, int64_t scm, const T* bias) {
  switch (mr) {
    case 4: bcast_block<T, 4, NV>(o, r0, mcol, smk, c, scm, bias); break;
    case 3: bcast_block<T, 3, NV>(o, r0, mcol, smk, c, scm, bias); break;
    case 2: bcast_block<T, 2, NV>(o, r0, mcol, smk, c, scm, bias); break;
    default: bcast_block<T, 1, NV>(o, r0, mcol, smk, c, scm, bias); break;
  }
}

// Rows r0..r0+mr of out. Columns in vectors of 2L, then L, then the last < L columns from the
// packed tail into an L-wide copy of the out rows.
template <typename T>
FD_ALWAYS_INLINE void bcast_kernel(const Operands<T>& o, int64_t r0, int mr) {
  constexpr int L = Vec<T>::kLanes;
  T* c = o.c + r0 * o.scm;
  int64_t n = 0;
  for (; n + 2 * L <= o.N; n += 2 * L)
    bcast_rows<T, 2>(o, r0, mr, o.m + n, o.smk, c + n, o.scm, o.bias ? o.bias + n : nullptr);
  for (; n + L <= o.N; n += L)
    bcast_rows<T, 1>(o, r0, mr, o.m + n, o.smk, c + n, o.scm, o.bias ? o.bias + n : nullptr);
  const int64_t nt = o.N - n;
  if (nt == 0) return;
  T cp[kRows * L] = {};
  if (o.accumulate)
    for (int r = 0; r < mr; ++r)
      for (int64_t j = 0; j < nt; ++j) cp[r * L + j] = c[r * o.scm + n + j];
  bcast_rows<T, 1>(o, r0, mr, o.m_tail, L, cp, L, o.bias ? o.m_tail + o.K * L : nullptr);
  for (int r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nt; ++j) c[r * o.scm + n + j] = cp[r * L + j];
}

// ------------------------------------------------------------------------ dot kernel
// Lane sums of L vectors at once, as a tree of shuffles: each level adds the two halves of every
// lane group of two vectors into one (a's sums in the low half of each group, b's in the high
// half). After log2(L) levels one vector holds all L sums, the input placed at position p ending
// in lane bitreverse(p); inputs are placed bit-reversed so that lane j holds the sum of x[j].
template <int L, int H>
constexpr int lo_lane(int j) {
  const int group = j / (2 * H) * 2 * H, r = j % (2 * H);
  return r < H ? group + r : L + group + r - H;
}
template <int L, int H>
constexpr int hi_lane(int j) {
  return lo_lane<L, H>(j) + H;
}
template <int L>
constexpr int bit_reverse(int j) {
  int r = 0;
  for (int b = 1; b < L; b <<= 1) r = (r << 1) | ((j / b) & 1);
  return r;
}

template <typename V, int L, int H, int... J>
FD_ALWAYS_INLINE V fold_pair(const V& a, const V& b, std::integer_sequence<int, J...>) {
  return __builtin_shufflevector(a, b, lo_lane<L, H>(J)...) +
         __builtin_shufflevector(a, b, hi_lane<L, H>(J)...);
}

template <typename V, int L, int H>
FD_ALWAYS_INLINE void fold_levels(V* cur, int n) {
  for (int p = 0; p < n / 2; ++p)
    cur[p] = fold_pair<V, L, H>(cur[2 * p], cur[2 * p + 1], std::make_integer_sequence<int, L>{});
  if constexpr (H > 1) fold_levels<V, L, H / 2>(cur, n / 2);
}

// sums[q] = the lane sum of x[q], q < count <= L.
template <typename T>
FD_ALWAYS_INLINE void lane_sums(const typename Vec<T>::type* x, int count, T* sums) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  V cur[L];
  for (int j = 0; j < L; ++j) cur[bit_reverse<L>(j)] = j < count ? x[j] : V{};
  fold_levels<V, L, L / 2>(cur, L);
  for (int j = 0; j < count; ++j) sums[j] = cur[0][j];
}

// out[r, n] = sum_k a[r, k] m[k, n] with a and m both unit-stride along k (m = W^T): MR x NR
// dot products at a time, L lanes of k per step, the last < L through zero-filled vectors.
template <typename T, int MR, int NR>
FD_ALWAYS_INLINE void dot_block(const Operands<T>& o, const T* a_tail, int64_t r0, int64_t n0) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::kLanes;
  constexpr int Q = MR * NR;
  V acc[Q];
  for (int q = 0; q < Q; ++q) acc[q] = V{};
  const T* ap = o.a + r0 * o.sam;
  const T* mp = o.m + n0 * o.smn;
  int64_t k = 0;
  for (; k + L <= o.K; k += L) {
    V av[MR], mv[NR];
    for (int r = 0; r < MR; ++r) av[r] = vload<V>(ap + r * o.sam + k);
    for (int j = 0; j < NR; ++j) mv[j] = vload<V>(mp + j * o.smn + k);
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r * NR + j] += av[r] * mv[j];
  }
  if (k < o.K) {  // the last K % L of k: zero-padded copies (a_tail rows x L, m_tail N x L)
    V av[MR], mv[NR];
    for (int r = 0; r < MR; ++r) av[r] = vload<V>(a_tail + r * L);
    for (int j = 0; j < NR; ++j) mv[j] = vload<V>(o.m_tail + (n0 + j) * L);
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r * NR + j] += av[r] * mv[j];
  }
  T sums[Q];
  for (int q = 0; q < Q; q += L) lane_sums<T>(acc + q, Q - q < L ? Q - q : L, sums + q);
  T* c = o.c + r0 * o.scm + n0;
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) {
      const T base = o.accumulate ? c[r * o.scm + j] : (o.bias ? o.bias[n0 + j] : T(0));
      c[r * o.scm + j] = base + sums[r * NR + j];
    }
}

template <typename T, int MR>
FD_ALWAYS_INLINE void dot_cols(const Operands<T>& o, const T* a_tail, int64_t r0) {
  int64_t n = 0;
  for (; n + 4 <= o.N; n += 4) dot_block<T, MR, 4>(o, a_tail, r0, n);
  switch (o.N - n) {
    case 3: dot_block<T, MR, 3>(o, a_tail, r0, n); break;
    case 2: dot_block<T, MR, 2>(o, a_tail, r0, n); break;
    case 1: dot_block<T, MR, 1>(o, a_tail, r0, n); break;
    default: break;
  }
}

// Rows r0..r0+mr of out; their last K % L entries of a copied zero-padded (a_tail).
template <typename T>
FD_ALWAYS_INLINE void dot_kernel(const Operands<T>& o, int64_t r0, int mr) {
  constexpr int L = Vec<T>::kLanes;
  const int64_t k0 = o.K / L * L, kt = o.K - k0;
  T a_tail[kRows * L] = {};
  for (int r = 0; r < mr && kt > 0; ++r)
    for (int64_t i = 0; i < kt; ++i) a_tail[r * L + i] = o.a[(r0 + r) * o.sam + k0 + i];
  switch (mr) {
    case 4: dot_cols<T, 4>(o, a_tail, r0); break;
    case 3: dot_cols<T, 3>(o, a_tail, r0); break;
    case 2: dot_cols<T, 2>(o, a_tail, r0); break;
    default: dot_cols<T, 1>(o, a_tail, r0); break;
  }
}

// One block of rows with whichever kernel the layout allows (`dot` chosen by the caller).
FD_CPU_CLONES void rows_block(const Operands<float>& o, int64_t r0, int mr, bool dot) {
  dot ? dot_kernel(o, r0, mr) : bcast_kernel(o, r0, mr);
}
FD_CPU_CLONES void rows_block(const Operands<double>& o, int64_t r0, int mr, bool dot) {
  dot ? dot_kernel(o, r0, mr) : bcast_kernel(o, r0, mr);
}

template <typename T>
void run(const at::Tensor& out, const at::Tensor& a, const at::Tensor& m, const at::Tensor& bias,
         bool accumulate, bool dot) {
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  const int64_t blocks = (M + kRows - 1) / kRows;
  const int64_t grain = std::max<int64_t>(1, kMacsPerTask / std::max<int64_t>(1, kRows * N * K));
  T* c0 = out.data_ptr<T>();
  const T* a0 = a.const_data_ptr<T>();
  const T* m0 = m.const_data_ptr<T>();
  const T* b0 = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  at::parallel_for(0, B * blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> tail;
    Operands<T> o{};
    int64_t packed = -1;  // the batch entry whose operands (and tail) o holds
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / blocks, r0 = (t % blocks) * kRows;
      if (b != packed) {
        o = Operands<T>{c0 + b * out.stride(0),
                        out.stride(1),
                        a0 + b * a.stride(0),
                        a.stride(1),
                        a.stride(2),
                        m0 + b * m.stride(0),
                        m.stride(1),
                        m.stride(2),
                        b0 ? b0 + b * bias.stride(0) : nullptr,
                        M,
                        N,
                        K,
                        accumulate};
        pack_tail(o, dot, tail);
        packed = b;
      }
      rows_block(o, r0, static_cast<int>(std::min<int64_t>(kRows, M - r0)), dot);
    }
  });
}

}  // namespace

bool small_bmm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& m,
                    const at::Tensor& bias, bool accumulate) {
  if (!out.is_cpu() || !a.is_cpu() || !m.is_cpu()) return false;
  const auto st = out.scalar_type();
  if ((st != at::kFloat && st != at::kDouble) || a.scalar_type() != st || m.scalar_type() != st)
    return false;
  if (out.dim() != 3 || a.dim() != 3 || m.dim() != 3) return false;
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  if (a.size(0) != B || a.size(1) != M || m.size(0) != B || m.size(1) != K || m.size(2) != N)
    return false;
  if (B == 0 || M == 0 || N == 0 || K == 0 || B * M * N * K > kMaxMacs) return false;
  if (out.stride(2) != 1) return false;
  if (bias.defined()) {
    if (!bias.is_cpu() || bias.scalar_type() != st || bias.dim() != 2 || bias.size(0) != B ||
        bias.size(1) != N || bias.stride(1) != 1)
      return false;
  }
  const bool dot = m.stride(2) != 1;
  if (dot && (a.stride(2) != 1 || m.stride(1) != 1)) return false;
  if (st == at::kFloat) {
    run<float>(out, a, m, bias, accumulate, dot);
  } else {
    run<double>(out, a, m, bias, accumulate, dot);
  }
  return true;
}

at::Tensor small_bmm_new(const at::Tensor& a, const at::Tensor& m, const at::Tensor& bias) {
  at::Tensor out = at::empty({a.size(0), a.size(1), m.size(2)}, a.options());
  if (small_bmm_into(out, a, m, bias, false)) return out;
  return bias.defined() ? at::baddbmm(bias.unsqueeze(1), a, m) : at::bmm(a, m);
}

void small_bmm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& m,
                   bool accumulate) {
  if (small_bmm_into(out, a, m, at::Tensor(), accumulate)) return;
  if (accumulate) {
    out.baddbmm_(a, m);
  } else {
    out.copy_(at::bmm(a, m));
  }
}

}  // namespace fastdistill

// ------------------------------------------------------------------------------------ op
namespace fastdistill {
namespace {

at::Tensor small_bmm_op(const at::Tensor& a, const at::Tensor& m,
                        const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& acc) {
  constexpr const char* op = "fastdistill::small_bmm";
  check_reference_arg(op, "a", a, a.device().type());
  check_like(op, "m", m, "a", a, false);
  TORCH_CHECK_VALUE(a.dim() == 3 && m.dim() == 3, op,
                    ": `a` [B, M, K] and `m` [B, K, N] must be 3-D, got ", shape_str(a), " and ",
                    shape_str(m));
  TORCH_CHECK_VALUE(m.size(0) == a.size(0) && m.size(1) == a.size(2), op,
                    ": `m` must be [B, K, N] = [", std::to_string(a.size(0)), ", ",
                    std::to_string(a.size(2)), ", N] for `a` ", shape_str(a), ", got ",
                    shape_str(m));
  const int64_t B = a.size(0), M = a.size(1), N = m.size(2);
  TORCH_CHECK_VALUE(!(bias.has_value() && acc.has_value()), op,
                    ": give `bias` or `acc`, not both");
  if (acc.has_value()) {
    check_like(op, "acc", *acc, "a", a, false);
    const bool ok = acc->dim() == 3 && acc->size(0) == B && acc->size(1) == M && acc->size(2) == N;
    TORCH_CHECK_VALUE(ok, op, ": `acc` must be [B, M, N] = [", std::to_string(B), ", ",
                      std::to_string(M), ", ", std::to_string(N), "], got ", shape_str(*acc));
    at::Tensor out = acc->clone(at::MemoryFormat::Contiguous);
    small_bmm_out(out, a, m, true);
    return out;
  }
  at::Tensor b;
  if (bias.has_value()) {
    check_like(op, "bias", *bias, "a", a, false);
    TORCH_CHECK_VALUE(bias->dim() == 2 && bias->size(0) == B && bias->size(1) == N, op,
                      ": `bias` must be [B, N] = [", std::to_string(B), ", ", std::to_string(N),
                      "], got ", shape_str(*bias));
    b = bias->stride(1) == 1 ? *bias : bias->contiguous();
  }
  return small_bmm_new(a, m, b);
}

}  // namespace

// The small kernels run on the CPU; elsewhere (and for large products) the same op is ATen's.
TORCH_LIBRARY_IMPL(fastdistill, CPU, m) { m.impl("small_bmm", &small_bmm_op); }
TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) { m.impl("small_bmm", &small_bmm_op); }

}  // namespace fastdistill
