// fastdistill::nearest_embedding: plain types shared by the host code and the kernels (no torch
// headers: included by the .cu files).
//
// For queries [N, D] and a table [V, D], the k best rows of the table for each query. Every
// implementation ranks by a "key" (smaller is better) computed from the dot product s = q . t:
//   euclidean: key = max((||q||^2 - 2 s) + ||t||^2, 0)   value = sqrt(key)   (ascending)
//   cosine:    key = -((s * inv_q) * inv_t)               value = -key        (descending)
//              inv_x = 1 / ||x||, or 0 for a zero row (so zero rows have similarity 0)
//   inner:     key = -s                                   value = -key        (descending)
// Keys are ordered with NaN last (after +inf), ties by the lower table index; zero keys are
// canonicalised to +0. The euclidean values (sqrt of the keys) are finally ordered by
// (value, index), so equal distances always come lower index first.
//
// Memory stays bounded for any N * V (faiss brute-force k-NN style): scores are computed one
// [query block x table block] tile at a time with a matrix product, and each tile is folded
// into a running top-k per query; the [N, V] score matrix never exists.
#pragma once

#include <cstdint>

#include "fastdistill/params.h"

namespace fastdistill {

enum class Metric : int32_t { kEuclidean = 0, kCosine = 1, kInner = 2 };

// CPU tiles: a [256 x 1024] score tile is 1 MiB (float32) or 2 MiB (float64), one per thread,
// sized for the L2/L3 caches. Fewer queries per block when N is small (so that every thread
// gets a block) or k is large (the per-query candidate buffers, ~2k entries, stay ~16 MiB).
constexpr int64_t kNearestCpuQueryBlock = 256;
constexpr int64_t kNearestCpuTableBlock = 1024;
constexpr int64_t kNearestCpuStateBytes = int64_t(16) << 20;

// CUDA tiles: [2048 x 4096] = 32 MiB (float32) / 64 MiB (float64) of scores per tile: large
// enough for cuBLAS to run near peak, small against the GPU's memory.
constexpr int64_t kNearestCudaQueryBlock = 2048;
constexpr int64_t kNearestCudaTableBlock = 4096;
// k up to this: one block per query keeps its top-k in shared memory (fast path); larger k
// merges each tile with a stable segmented sort (slow path).
constexpr int64_t kNearestCudaFastMaxK = 128;

// CUDA fast path: fold one score tile into the running top-k of its queries.
struct NearestTileParams {
  const void* scores;  // [rows, ld] tile of q . t (row-major), first `cols` columns used
  int64_t ld;
  int64_t rows;
  int64_t cols;
  int64_t col0;        // table index of column 0
  const void* q_aux;   // [rows]: ||q||^2 (euclidean), inv ||q|| (cosine), unused (inner)
  const void* t_aux;   // [cols], same for the tile's table rows
  void* keys;          // [rows, k] running keys, sorted (values after the last tile)
  int64_t* idx;        // [rows, k] running table indices
  int64_t k;
  Metric metric;
  DType dtype;         // kFloat32 or kFloat64
  bool last;           // last tile: turn keys into values
};

// Row norms: out[r] = sum_d x[r, d]^2 (squared) or its sqrt, accumulated in double.
struct RowNormsParams {
  const void* x;  // [rows, dim] contiguous
  void* out;      // [rows]
  int64_t rows;
  int64_t dim;
  bool squared;
  DType dtype;
};

// CUDA slow path: scores -> keys in place over a tile, and keys -> values (+ the euclidean
// (value, index) ordering) over [rows, k] (written to `values` / `out_idx`).
struct NearestKeysParams {
  void* scores;  // [rows, ld]
  int64_t ld;
  int64_t rows;
  int64_t cols;
  const void* q_aux;
  const void* t_aux;
  Metric metric;
  DType dtype;
};

struct NearestFinalizeParams {
  const void* keys;      // [rows, k] sorted keys
  const int64_t* idx;    // [rows, k]
  void* values;          // [rows, k]
  int64_t* out_idx;      // [rows, k]
  int64_t rows;
  int64_t k;
  Metric metric;
  DType dtype;
};

}  // namespace fastdistill
