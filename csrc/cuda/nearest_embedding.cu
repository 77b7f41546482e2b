// CUDA kernels of fastdistill::nearest_embedding (see fastdistill/nearest_embedding.h for the
// keys and the ordering). The host code (nearest_embedding_cuda.cpp) computes each score tile
// with cuBLAS (at::mm_out) and then launches, on the same stream:
//   * fast path (k <= kNearestCudaFastMaxK): select_tile_kernel, one block per query row. The
//     block loads the query's running top-k into shared memory, scans the tile row in chunks of
//     kSelChunk scores (coalesced), appends the keys that beat the current k-th key to a shared
//     candidate buffer (warp-aggregated atomics), and when the buffer could overflow (and at the
//     end of the row) bitonic-sorts running top-k + candidates by (key, index) and keeps the
//     first k. The sort makes the result independent of the append order: deterministic.
//   * slow path (larger k): scores_to_keys_kernel turns the tile into keys in place; the host
//     merges with a stable segmented sort; finalize_kernel turns keys into values.
#include <cstdint>

#include "common.cuh"
#include "fastdistill/nearest_embedding.h"
#include "fastdistill/nearest_embedding_cuda.h"

namespace fastdistill {
namespace cuda {
namespace {

constexpr int kSelThreads = 128;
constexpr int kSelItems = 4;
constexpr int kSelChunk = kSelThreads * kSelItems;  // scores per scan step
constexpr int kSelSlots = 1024;                     // shared entries: top-k + candidates
static_assert(kNearestCudaFastMaxK + kSelChunk <= kSelSlots, "candidate buffer too small");
static_assert((kSelSlots & (kSelSlots - 1)) == 0, "kSelSlots must be a power of two");

constexpr int kNormThreads = 256;  // 8 warps, one row per warp

template <typename T>
__device__ __forceinline__ T quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

// NaN is the largest key (after +inf).
template <typename T>
__device__ __forceinline__ bool key_less(T a, T b) {
  return a < b || (isnan(b) && !isnan(a));
}

template <typename T>
__device__ __forceinline__ bool entry_before(T ka, int64_t ia, T kb, int64_t ib) {
  if (key_less(ka, kb)) return true;
  if (key_less(kb, ka)) return false;
  return ia < ib;
}

template <typename T, Metric M>
__device__ __forceinline__ T score_to_key(T s, T q_aux, T t_aux) {
  if (M == Metric::kEuclidean) {
    const T d = (q_aux - T(2) * s) + t_aux;
    return d < T(0) ? T(0) : d;  // keeps NaN
  } else if (M == Metric::kCosine) {
    return -((s * q_aux) * t_aux) + T(0);  // + 0: -0 becomes +0
  } else {
    return -s + T(0);
  }
}

template <typename T>
__device__ __forceinline__ T key_to_value(T key, Metric m) {
  return m == Metric::kEuclidean ? sqrt(key) : T(0) - key;
}

// Sorts the first n (a power of two) entries of key/idx by (key, index), ascending. All threads
// of the block must call it; ends with __syncthreads.
template <typename T>
__device__ void bitonic_sort(T* key, int64_t* idx, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int p = threadIdx.x; p < (n >> 1); p += blockDim.x) {
        const int i = ((p & ~(stride - 1)) << 1) | (p & (stride - 1));
        const int j = i + stride;
        const bool ascending = (i & size) == 0;
        const T ki = key[i], kj = key[j];
        const int64_t ii = idx[i], ij = idx[j];
        if (entry_before(kj, ij, ki, ii) == ascending) {
          key[i] = kj;
          key[j] = ki;
          idx[i] = ij;
          idx[j] = ii;
        }
      }
      __syncthreads();
    }
  }
}

// Insertion sort of a nearly sorted list by (value, index): sqrt can make distinct squared
// distances equal, and equal distances must come lower index first. One thread.
template <typename T>
__device__ void order_equal_values(T* v, int64_t* idx, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const T x = v[i];
    const int64_t xi = idx[i];
    int64_t j = i - 1;
    while (j >= 0 && entry_before(x, xi, v[j], idx[j])) {
      v[j + 1] = v[j];
      idx[j + 1] = idx[j];
      --j;
    }
    v[j + 1] = x;
    idx[j + 1] = xi;
  }
}

template <typename T, Metric M>
__global__ void __launch_bounds__(kSelThreads) select_tile_kernel(NearestTileParams p) {
  __shared__ T s_key[kSelSlots];
  __shared__ int64_t s_idx[kSelSlots];
  __shared__ int s_count;
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x;
  const int k = static_cast<int>(p.k);
  T* keys = static_cast<T*>(p.keys) + row * p.k;
  int64_t* idx = p.idx + row * p.k;
  const T* scores = static_cast<const T*>(p.scores) + row * p.ld;
  const T* t_aux = static_cast<const T*>(p.t_aux);
  const T q_aux = M == Metric::kInner ? T(0) : static_cast<const T*>(p.q_aux)[row];

  // Entries kept so far: min(k, table rows already seen); the running list is sorted.
  int nvalid = static_cast<int>(p.col0 < p.k ? p.col0 : p.k);
  for (int i = tid; i < nvalid; i += kSelThreads) {
    s_key[i] = keys[i];
    s_idx[i] = idx[i];
  }
  if (tid == 0) s_count = 0;
  __syncthreads();

  auto merge = [&](int count) {
    // Precondition: every thread has read `count` and passed a __syncthreads since the appends.
    const int total = nvalid + count;
    int n = 1;
    while (n < total) n <<= 1;
    for (int i = total + tid; i < n; i += kSelThreads) {
      s_key[i] = quiet_nan<T>();
      s_idx[i] = INT64_MAX;  // after every real entry, NaN keys included
    }
    __syncthreads();
    bitonic_sort(s_key, s_idx, n);
    nvalid = total < k ? total : k;
    if (tid == 0) s_count = 0;
    __syncthreads();
  };

  const int lane = tid & 31;
  for (int64_t base = 0; base < p.cols; base += kSelChunk) {
    // Every thread reads the same count (appends of the previous chunk are done), and none
    // appends before all have read it: the merge decision is uniform over the block.
    const int count = s_count;
    __syncthreads();
    if (nvalid + count + kSelChunk > kSelSlots) merge(count);
    const bool full = nvalid == k;
    const T thr = full ? s_key[k - 1] : T(0);
#pragma unroll
    for (int it = 0; it < kSelItems; ++it) {
      const int64_t j = base + it * kSelThreads + tid;
      bool take = false;
      T key = T(0);
      if (j < p.cols) {
        T ta = T(0);
        if (M != Metric::kInner) ta = t_aux[j];
        key = score_to_key<T, M>(scores[j], q_aux, ta);
        take = !full || key_less(key, thr);  // later index: an equal key loses the tie
      }
      const unsigned mask = __ballot_sync(0xffffffffu, take);
      if (mask != 0u) {
        int wbase = 0;
        if (lane == 0) wbase = atomicAdd(&s_count, __popc(mask));
        wbase = __shfl_sync(0xffffffffu, wbase, 0);
        if (take) {
          const int pos = nvalid + wbase + __popc(mask & ((1u << lane) - 1u));
          s_key[pos] = key;
          s_idx[pos] = p.col0 + j;
        }
      }
    }
    __syncthreads();
  }
  const int count = s_count;
  __syncthreads();
  if (count > 0) merge(count);

  if (!p.last) {
    for (int i = tid; i < nvalid; i += kSelThreads) {
      keys[i] = s_key[i];
      idx[i] = s_idx[i];
    }
    return;
  }
  for (int i = tid; i < nvalid; i += kSelThreads) s_key[i] = key_to_value(s_key[i], p.metric);
  __syncthreads();
  if (M == Metric::kEuclidean && tid == 0) order_equal_values(s_key, s_idx, nvalid);
  __syncthreads();
  for (int i = tid; i < nvalid; i += kSelThreads) {
    keys[i] = s_key[i];
    idx[i] = s_idx[i];
  }
}

template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    row_norms_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t rows, int64_t dim,
                     bool squared) {
  const int64_t row = int64_t(blockIdx.x) * (kNormThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps leave together
  const T* xr = x + row * dim;
  double acc = 0.0;
  for (int64_t d = lane; d < dim; d += 32) {
    const double v = static_cast<double>(xr[d]);
    acc += v * v;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) out[row] = static_cast<T>(squared ? acc : sqrt(acc));
}

template <typename T, Metric M>
__global__ void scores_to_keys_kernel(T* __restrict__ s, int64_t ld, int64_t rows, int64_t cols,
                                      const T* __restrict__ q_aux,
                                      const T* __restrict__ t_aux) {
  const int64_t total = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols;
    const int64_t c = e - r * cols;
    T qa = T(0), ta = T(0);
    if (M != Metric::kInner) {
      qa = q_aux[r];
      ta = t_aux[c];
    }
    T* ptr = s + r * ld + c;
    *ptr = score_to_key<T, M>(*ptr, qa, ta);
  }
}

template <typename T>
__global__ void finalize_kernel(NearestFinalizeParams p) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.rows) return;
  const T* keys = static_cast<const T*>(p.keys) + row * p.k;
  const int64_t* idx = p.idx + row * p.k;
  T* values = static_cast<T*>(p.values) + row * p.k;
  int64_t* out_idx = p.out_idx + row * p.k;
  for (int64_t i = 0; i < p.k; ++i) {
    values[i] = key_to_value(keys[i], p.metric);
    out_idx[i] = idx[i];
  }
  if (p.metric == Metric::kEuclidean) order_equal_values(values, out_idx, p.k);
}

template <typename T>
cudaError_t launch_select(const NearestTileParams& p, cudaStream_t stream) {
  if (p.k < 1 || p.k > kNearestCudaFastMaxK || p.rows > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(p.rows));
  switch (p.metric) {
    case Metric::kEuclidean:
      select_tile_kernel<T, Metric::kEuclidean><<<grid, kSelThreads, 0, stream>>>(p);
      break;
    case Metric::kCosine:
      select_tile_kernel<T, Metric::kCosine><<<grid, kSelThreads, 0, stream>>>(p);
      break;
    case Metric::kInner:
      select_tile_kernel<T, Metric::kInner><<<grid, kSelThreads, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_keys(const NearestKeysParams& p, cudaStream_t stream) {
  const int threads = 256;
  int64_t blocks = ceil_div(p.rows * p.cols, threads);
  if (blocks < 1) return cudaSuccess;
  if (blocks > 65535) blocks = 65535;
  auto* s = static_cast<T*>(p.scores);
  const auto* qa = static_cast<const T*>(p.q_aux);
  const auto* ta = static_cast<const T*>(p.t_aux);
  switch (p.metric) {
    case Metric::kEuclidean:
      scores_to_keys_kernel<T, Metric::kEuclidean>
          <<<unsigned(blocks), threads, 0, stream>>>(s, p.ld, p.rows, p.cols, qa, ta);
      break;
    case Metric::kCosine:
      scores_to_keys_kernel<T, Metric::kCosine>
          <<<unsigned(blocks), threads, 0, stream>>>(s, p.ld, p.rows, p.cols, qa, ta);
      break;
    case Metric::kInner:
      scores_to_keys_kernel<T, Metric::kInner>
          <<<unsigned(blocks), threads, 0, stream>>>(s, p.ld, p.rows, p.cols, qa, ta);
      break;
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace cuda

cudaError_t launch_row_norms(const RowNormsParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int64_t rows_per_block = cuda::kNormThreads / 32;
  const unsigned blocks = static_cast<unsigned>(cuda::ceil_div(p.rows, rows_per_block));
  switch (p.dtype) {
    case DType::kFloat32:
      cuda::row_norms_kernel<float><<<blocks, cuda::kNormThreads, 0, stream>>>(
          static_cast<const float*>(p.x), static_cast<float*>(p.out), p.rows, p.dim, p.squared);
      return cudaGetLastError();
    case DType::kFloat64:
      cuda::row_norms_kernel<double><<<blocks, cuda::kNormThreads, 0, stream>>>(
          static_cast<const double*>(p.x), static_cast<double*>(p.out), p.rows, p.dim,
          p.squared);
      return cudaGetLastError();
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_nearest_select_tile(const NearestTileParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32:
      return cuda::launch_select<float>(p, stream);
    case DType::kFloat64:
      return cuda::launch_select<double>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_nearest_scores_to_keys(const NearestKeysParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32:
      return cuda::launch_keys<float>(p, stream);
    case DType::kFloat64:
      return cuda::launch_keys<double>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_nearest_finalize(const NearestFinalizeParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>(cuda::ceil_div(p.rows, threads));
  switch (p.dtype) {
    case DType::kFloat32:
      cuda::finalize_kernel<float><<<blocks, threads, 0, stream>>>(p);
      return cudaGetLastError();
    case DType::kFloat64:
      cuda::finalize_kernel<double><<<blocks, threads, 0, stream>>>(p);
      return cudaGetLastError();
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace fastdistill
