// CUDA kernels of fastdistill::soft_label_loss, soft_label_loss_backward and
// soft_label_loss_double_backward (row math in fastdistill/soft_label_loss_rows.h).
// Rows of up to kSoftLabelCudaWarpMaxCols columns: one warp per row, 8 rows per block. Wider
// rows: one block per row. Binary rows (one column): one thread per row. Reductions use xor
// shuffles (every lane ends with the same, order-fixed value) and, across the warps of a block,
// shared memory summed in warp order: results are deterministic.
#include "common.cuh"
#include "fastdistill/soft_label_loss.h"
#include "fastdistill/soft_label_loss_cuda.h"
#include "fastdistill/soft_label_loss_rows.h"

namespace fastdistill {
namespace cuda {
namespace {

constexpr int kThreads = kSoftLabelCudaThreads;
constexpr int kWarps = kThreads / 32;
static_assert(kThreads % 32 == 0 && kWarps <= 32, "block must be whole warps");

template <typename T>
__device__ __forceinline__ T warp_all_sum(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename T>
__device__ __forceinline__ T warp_all_max(T x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T o = __shfl_xor_sync(0xffffffffu, x, offset);
    x = o > x ? o : x;
  }
  return x;
}

// One warp per row.
struct WarpRow {
  FD_HOST_DEVICE static int64_t lane() {
#if defined(__CUDA_ARCH__)
    return threadIdx.x & 31;
#else
    return 0;
#endif
  }
  FD_HOST_DEVICE static int64_t stride() { return 32; }
  template <typename acc_t>
  FD_HOST_DEVICE static int64_t simd_end(int64_t K) {
    return K;
  }
  template <typename T>
  FD_HOST_DEVICE static T sum(T x) {
#if defined(__CUDA_ARCH__)
    return warp_all_sum(x);
#else
    return x;
#endif
  }
  template <typename T>
  FD_HOST_DEVICE static T max(T x) {
#if defined(__CUDA_ARCH__)
    return warp_all_max(x);
#else
    return x;
#endif
  }
};

// All-reduce over the block: warp results through shared memory, added in warp order by every
// thread (same order everywhere, so every thread gets the same bits). Every thread of the block
// must call it (it synchronises).
template <typename T, bool IsMax>
__device__ __forceinline__ T block_all_reduce(T x) {
  __shared__ T partial[kWarps];
  x = IsMax ? warp_all_max(x) : warp_all_sum(x);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = x;
  __syncthreads();
  T r = partial[0];
#pragma unroll
  for (int i = 1; i < kWarps; ++i) r = IsMax ? (partial[i] > r ? partial[i] : r) : r + partial[i];
  __syncthreads();  // `partial` may be reused by the next reduction
  return r;
}

// One block per row.
struct BlockRow {
  FD_HOST_DEVICE static int64_t lane() {
#if defined(__CUDA_ARCH__)
    return threadIdx.x;
#else
    return 0;
#endif
  }
  FD_HOST_DEVICE static int64_t stride() { return kThreads; }
  template <typename acc_t>
  FD_HOST_DEVICE static int64_t simd_end(int64_t K) {
    return K;
  }
  template <typename T>
  FD_HOST_DEVICE static T sum(T x) {
#if defined(__CUDA_ARCH__)
    return block_all_reduce<T, false>(x);
#else
    return x;
#endif
  }
  template <typename T>
  FD_HOST_DEVICE static T max(T x) {
#if defined(__CUDA_ARCH__)
    return block_all_reduce<T, true>(x);
#else
    return x;
#endif
  }
};

// Rows handled by a block per grid step, and the calling thread's row offset in it.
template <typename R>
struct Rows;
template <>
struct Rows<slrow::SerialRow> {
  static constexpr int kPerBlock = kThreads;
  __device__ static int offset() { return threadIdx.x; }
};
template <>
struct Rows<WarpRow> {
  static constexpr int kPerBlock = kWarps;
  __device__ static int offset() { return threadIdx.x >> 5; }
};
template <>
struct Rows<BlockRow> {
  static constexpr int kPerBlock = 1;
  __device__ static int offset() { return 0; }
};

// Typed view of the parameters.
template <typename T>
struct Buffers {
  const T* z;
  const T* y;
  const T* g;
  const T* u;
  const T* w;
  T* out_rows;
  T* out_z;
  T* out_y;
  int64_t rows;
  int64_t K;
  int64_t ly;  // elements per row of labels-shaped buffers
  LabelKind kind;
};

// The row loop is uniform over the threads of a row (warp / block), as the reductions need.
template <typename T, typename R>
__global__ void __launch_bounds__(kThreads) forward_kernel(Buffers<T> b) {
  using acc_t = typename OpMath<T>::type;
  const int64_t step = int64_t(gridDim.x) * Rows<R>::kPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * Rows<R>::kPerBlock + Rows<R>::offset(); r < b.rows;
       r += step) {
    const acc_t loss = slrow::forward_row<R, acc_t>(b.z + r * b.K, b.y + r * b.ly, b.K, b.kind);
    if (R::lane() == 0) b.out_rows[r] = from_op<T>(loss);
  }
}

template <typename T, typename R>
__global__ void __launch_bounds__(kThreads) backward_kernel(Buffers<T> b) {
  using acc_t = typename OpMath<T>::type;
  const int64_t step = int64_t(gridDim.x) * Rows<R>::kPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * Rows<R>::kPerBlock + Rows<R>::offset(); r < b.rows;
       r += step) {
    slrow::backward_row<R, acc_t>(to_op(b.g[r]), b.z + r * b.K, b.y + r * b.ly, b.K, b.kind,
                                  b.out_z + r * b.K, b.out_y + r * b.ly);
  }
}

template <typename T, typename R>
__global__ void __launch_bounds__(kThreads) double_backward_kernel(Buffers<T> b) {
  using acc_t = typename OpMath<T>::type;
  const int64_t step = int64_t(gridDim.x) * Rows<R>::kPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * Rows<R>::kPerBlock + Rows<R>::offset(); r < b.rows;
       r += step) {
    const acc_t dg = slrow::double_backward_row<R, acc_t>(
        to_op(b.g[r]), b.z + r * b.K, b.y + r * b.ly, b.u + r * b.K, b.w + r * b.ly, b.K, b.kind,
        b.out_z + r * b.K, b.out_y + r * b.ly);
    if (R::lane() == 0) b.out_rows[r] = from_op<T>(dg);
  }
}

enum class Pass { kForward, kBackward, kDoubleBackward };

template <typename T, typename R>
cudaError_t launch_rows(const Buffers<T>& b, Pass pass, cudaStream_t stream) {
  int64_t blocks = ceil_div(b.rows, Rows<R>::kPerBlock);
  if (blocks > kSoftLabelCudaMaxBlocks) blocks = kSoftLabelCudaMaxBlocks;
  switch (pass) {
    case Pass::kForward:
      forward_kernel<T, R><<<unsigned(blocks), kThreads, 0, stream>>>(b);
      break;
    case Pass::kBackward:
      backward_kernel<T, R><<<unsigned(blocks), kThreads, 0, stream>>>(b);
      break;
    case Pass::kDoubleBackward:
      double_backward_kernel<T, R><<<unsigned(blocks), kThreads, 0, stream>>>(b);
      break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch(const SoftLabelLossParams& p, Pass pass, cudaStream_t stream) {
  Buffers<T> b;
  b.z = static_cast<const T*>(p.logits);
  b.y = static_cast<const T*>(p.labels);
  b.g = static_cast<const T*>(p.grad);
  b.u = static_cast<const T*>(p.gg_logits);
  b.w = static_cast<const T*>(p.gg_labels);
  b.out_rows = static_cast<T*>(p.out_rows);
  b.out_z = static_cast<T*>(p.out_logits);
  b.out_y = static_cast<T*>(p.out_labels);
  b.rows = p.rows;
  b.K = p.cols;
  b.ly = p.kind == LabelKind::kBinary ? 1 : p.cols;
  b.kind = p.kind;
  if (p.kind == LabelKind::kBinary) return launch_rows<T, slrow::SerialRow>(b, pass, stream);
  if (p.cols <= kSoftLabelCudaWarpMaxCols) return launch_rows<T, WarpRow>(b, pass, stream);
  return launch_rows<T, BlockRow>(b, pass, stream);
}

cudaError_t launch_pass(const SoftLabelLossParams& p, Pass pass, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32:
      return launch<float>(p, pass, stream);
    case DType::kFloat64:
      return launch<double>(p, pass, stream);
    default:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace cuda

cudaError_t launch_soft_label_loss(const SoftLabelLossParams& p, cudaStream_t stream) {
  return cuda::launch_pass(p, cuda::Pass::kForward, stream);
}

cudaError_t launch_soft_label_loss_backward(const SoftLabelLossParams& p, cudaStream_t stream) {
  return cuda::launch_pass(p, cuda::Pass::kBackward, stream);
}

cudaError_t launch_soft_label_loss_double_backward(const SoftLabelLossParams& p,
                                                   cudaStream_t stream) {
  return cuda::launch_pass(p, cuda::Pass::kDoubleBackward, stream);
}

}  // namespace fastdistill
