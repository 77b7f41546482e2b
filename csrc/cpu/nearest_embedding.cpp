// CPU kernel of fastdistill::nearest_embedding: brute-force k nearest table rows per query with a
// fused, tiled selection (see fastdistill/nearest_embedding.h for the metrics and the ordering).
//
// Queries are split into blocks (parallel over blocks with at::parallel_for); each thread walks
// the table in blocks, computes one [query block x table block] score tile with at::mm_out
// (MKL/OpenBLAS SGEMM/DGEMM, single-threaded inside the parallel region), turns the tile into
// keys in place, and folds each row into the query's running top-k:
//   * a candidate buffer of cap = min(V, 2k + 64) entries per query; entries are appended while
//     fewer than k were kept, then only if their key beats the current k-th key (`thr`); when the
//     buffer is full it is compacted to the k best (std::nth_element), which tightens `thr`;
//   * rows are scanned 32 keys at a time with a vectorised "any key below thr?" test, so almost
//     all of the V keys of a query cost a compare and nothing else.
// Memory per thread: one score tile (kNearestCpuQueryBlock x kNearestCpuTableBlock) plus the
// candidate buffers of its query block; never the [N, V] matrix.
// Results do not depend on the thread count or the tile sizes (up to the GEMM's rounding, which
// may vary with the tile shape): the kept set is the k smallest (key, index) pairs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "fastdistill/checks.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/nearest_embedding.h"
#include "fastdistill/nearest_embedding_checks.h"

namespace fastdistill {
namespace {

// ------------------------------------------------------------------------------- row norms
template <typename T>
FD_ALWAYS_INLINE void row_norms_body(const T* __restrict__ x, T* __restrict__ out, int64_t rows,
                                     int64_t dim, bool squared) {
  constexpr int kLanes = 8;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    double lanes[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= dim; d += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const double v = static_cast<double>(xr[d + l]);
        lanes[l] += v * v;
      }
    }
    for (int l = 0; d < dim; ++d, ++l) {
      const double v = static_cast<double>(xr[d]);
      lanes[l] += v * v;
    }
    double s = 0;
    for (int l = 0; l < kLanes; ++l) s += lanes[l];
    out[r] = static_cast<T>(squared ? s : std::sqrt(s));
  }
}

FD_CPU_CLONES void row_norms_rows(const float* x, float* out, int64_t rows, int64_t dim,
                                  bool squared) {
  row_norms_body(x, out, rows, dim, squared);
}
FD_CPU_CLONES void row_norms_rows(const double* x, double* out, int64_t rows, int64_t dim,
                                  bool squared) {
  row_norms_body(x, out, rows, dim, squared);
}

// Squared row norms (euclidean) or row norms (cosine) of a contiguous [rows, dim] tensor, as the
// user-facing `table_norms` (accumulated in double, rounded to the dtype).
at::Tensor row_norms_cpu(const at::Tensor& x, bool squared) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  const int64_t rows = x.size(0);
  const int64_t dim = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest_embedding_row_norms", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1));
    at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      row_norms_rows(px + b * dim, po + b, e - b, dim, squared);
    });
  });
  return out;
}

// Per-row factor used by the key formula: squared norms (euclidean), 1/norm or 0 (cosine).
at::Tensor aux_from_norms(const at::Tensor& norms, Metric metric) {
  if (metric == Metric::kEuclidean) return norms;
  return at::where(at::gt(norms, 0), at::reciprocal(norms), at::zeros_like(norms));
}

// ------------------------------------------------------------------------ running top-k
template <typename T>
struct Cand {
  T key;
  int64_t idx;
};

// NaN is the largest key (after +inf).
template <typename T>
FD_ALWAYS_INLINE bool key_less(T a, T b) {
  return a < b || (std::isnan(b) && !std::isnan(a));
}

template <typename T>
struct CandLess {
  bool operator()(const Cand<T>& a, const Cand<T>& b) const {
    if (key_less(a.key, b.key)) return true;
    if (key_less(b.key, a.key)) return false;
    return a.idx < b.idx;
  }
};

template <typename T>
struct TopK {
  Cand<T>* buf;  // cap entries
  int64_t count;
  int64_t cap;
  int64_t k;
  bool full;  // k entries kept and thr valid
  T thr;      // key of the k-th best kept entry (a new entry must be strictly better)

  void compact() {
    std::nth_element(buf, buf + (k - 1), buf + count, CandLess<T>());
    count = k;
    thr = buf[k - 1].key;
    full = true;
  }
  // Entries arrive in increasing index order, so an entry whose key equals thr loses the tie.
  FD_ALWAYS_INLINE void push(T key, int64_t j) {
    if (full && !key_less(key, thr)) return;
    buf[count++] = Cand<T>{key, j};
    if (count == cap) compact();
  }
};

template <typename T>
__attribute__((noinline)) void push_range(TopK<T>* st, const T* keys, int64_t n, int64_t j0) {
  for (int64_t u = 0; u < n; ++u) st->push(keys[u], j0 + u);
}

// One score row of a tile: scores -> keys in place, then fold the keys into `st`.
template <typename T, Metric M>
FD_ALWAYS_INLINE void process_row_body(T* __restrict__ row, int64_t w,
                                       const T* __restrict__ t_aux, T q_aux, int64_t j0,
                                       TopK<T>* st) {
  if (M == Metric::kEuclidean) {
    for (int64_t j = 0; j < w; ++j) {
      const T d = (q_aux - T(2) * row[j]) + t_aux[j];
      row[j] = d < T(0) ? T(0) : d;  // keeps NaN
    }
  } else if (M == Metric::kCosine) {
    for (int64_t j = 0; j < w; ++j) row[j] = -((row[j] * q_aux) * t_aux[j]) + T(0);
  } else {
    for (int64_t j = 0; j < w; ++j) row[j] = -row[j] + T(0);  // + 0: -0 becomes +0
  }
  int64_t j = 0;
  for (; j < w && !st->full; ++j) st->push(row[j], j0 + j);
  constexpr int64_t kScan = 32;
  for (; j + kScan <= w; j += kScan) {
    const T thr = st->thr;
    int any = 0;
    for (int64_t u = 0; u < kScan; ++u) any |= !(row[j + u] >= thr);  // NaN-safe superset
    if (any) push_range(st, row + j, kScan, j0 + j);
  }
  if (j < w) push_range(st, row + j, w - j, j0 + j);
}

#define FD_NEAREST_PROCESS_ROW(T)                                                            \
  FD_CPU_CLONES void process_row(T* row, int64_t w, const T* t_aux, T q_aux, int64_t j0,     \
                                 TopK<T>* st, Metric metric) {                               \
    switch (metric) {                                                                        \
      case Metric::kEuclidean:                                                               \
        process_row_body<T, Metric::kEuclidean>(row, w, t_aux, q_aux, j0, st);               \
        break;                                                                               \
      case Metric::kCosine:                                                                  \
        process_row_body<T, Metric::kCosine>(row, w, t_aux, q_aux, j0, st);                  \
        break;                                                                               \
      case Metric::kInner:                                                                   \
        process_row_body<T, Metric::kInner>(row, w, t_aux, q_aux, j0, st);                   \
        break;                                                                               \
    }                                                                                        \
  }
FD_NEAREST_PROCESS_ROW(float)
FD_NEAREST_PROCESS_ROW(double)
#undef FD_NEAREST_PROCESS_ROW

// The k best of `st`, best first, as values and indices.
template <typename T>
void finalize_row(TopK<T>* st, Metric metric, T* values, int64_t* indices) {
  const int64_t k = st->k;
  if (st->count > k) st->compact();
  Cand<T>* b = st->buf;
  std::sort(b, b + k, CandLess<T>());
  if (metric == Metric::kEuclidean) {
    // sqrt may make distinct squared distances equal: order equal distances by index too.
    for (int64_t r = 0; r < k; ++r) b[r].key = std::sqrt(b[r].key);
    std::sort(b, b + k, CandLess<T>());
  } else {
    for (int64_t r = 0; r < k; ++r) b[r].key = T(0) - b[r].key;
  }
  for (int64_t r = 0; r < k; ++r) {
    values[r] = b[r].key;
    indices[r] = b[r].idx;
  }
}

template <typename T>
void nearest_cpu_kernel(const at::Tensor& q, const at::Tensor& t, int64_t k, Metric metric,
                        const at::Tensor& q_aux, const at::Tensor& t_aux, at::Tensor& values,
                        at::Tensor& indices) {
  const int64_t N = q.size(0);
  const int64_t D = q.size(1);
  const int64_t V = t.size(0);
  const T* qp = q.const_data_ptr<T>();
  const T* tp = t.const_data_ptr<T>();
  const T* qa = metric == Metric::kInner ? nullptr : q_aux.const_data_ptr<T>();
  const T* ta = metric == Metric::kInner ? nullptr : t_aux.const_data_ptr<T>();
  T* vp = values.data_ptr<T>();
  int64_t* ip = indices.data_ptr<int64_t>();

  const int64_t cap = std::min<int64_t>(V, 2 * k + 64);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t bq = std::min<int64_t>(kNearestCpuQueryBlock, (N + threads - 1) / threads);
  bq = std::min<int64_t>(bq, kNearestCpuStateBytes / (cap * int64_t(sizeof(Cand<T>))));
  bq = std::max<int64_t>(bq, 1);
  const int64_t bv = std::min<int64_t>(kNearestCpuTableBlock, V);
  const int64_t num_blocks = (N + bq - 1) / bq;
  const auto opts = q.options();

  at::parallel_for(0, num_blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    std::vector<T> tile(static_cast<size_t>(bq * bv));
    std::vector<Cand<T>> cand(static_cast<size_t>(bq * cap));
    std::vector<TopK<T>> st(static_cast<size_t>(bq));
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t i0 = b * bq;
      const int64_t rows = std::min(bq, N - i0);
      for (int64_t r = 0; r < rows; ++r) {
        st[r] = TopK<T>{cand.data() + r * cap, 0, cap, k, false, T(0)};
      }
      // Plain (autograd-free) views of the inputs: this may run on a worker thread.
      const at::Tensor qb = at::from_blob(const_cast<T*>(qp + i0 * D), {rows, D}, {D, 1}, opts);
      for (int64_t j0 = 0; j0 < V; j0 += bv) {
        const int64_t w = std::min(bv, V - j0);
        T* tl = tile.data();
        if (D == 0) {
          std::fill(tl, tl + rows * w, T(0));
        } else {
          at::Tensor out = at::from_blob(tl, {rows, w}, {w, 1}, opts);
          const at::Tensor tb =
              at::from_blob(const_cast<T*>(tp + j0 * D), {w, D}, {D, 1}, opts);
          at::mm_out(out, qb, tb.t());
        }
        for (int64_t r = 0; r < rows; ++r) {
          process_row(tl + r * w, w, ta ? ta + j0 : nullptr, qa ? qa[i0 + r] : T(0), j0,
                      &st[r], metric);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        finalize_row(&st[r], metric, vp + (i0 + r) * k, ip + (i0 + r) * k);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> nearest_embedding_cpu(
    const at::Tensor& queries, const at::Tensor& table, int64_t k, c10::string_view metric_name,
    const std::optional<at::Tensor>& table_norms) {
  const Metric metric =
      check_nearest_embedding(queries, table, k, metric_name, table_norms, c10::DeviceType::CPU);
  // detach: internal products must not record autograd history (the op is not differentiable).
  const at::Tensor q = queries.detach().contiguous();
  const at::Tensor t = table.detach().contiguous();
  const int64_t N = q.size(0);
  at::Tensor values = at::empty({N, k}, q.options());
  at::Tensor indices = at::empty({N, k}, q.options().dtype(at::kLong));
  if (N == 0) return std::make_tuple(values, indices);

  at::Tensor q_aux, t_aux;
  if (metric != Metric::kInner) {
    const bool squared = metric == Metric::kEuclidean;
    const at::Tensor tn = table_norms.has_value() && table_norms->defined()
                              ? table_norms->detach().contiguous()
                              : row_norms_cpu(t, squared);
    t_aux = aux_from_norms(tn, metric).contiguous();
    q_aux = aux_from_norms(row_norms_cpu(q, squared), metric).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "nearest_embedding_cpu", [&] {
    nearest_cpu_kernel<scalar_t>(q, t, k, metric, q_aux, t_aux, values, indices);
  });
  return std::make_tuple(values, indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("nearest_embedding", &nearest_embedding_cpu);
}

}  // namespace fastdistill
