// CUDA kernels of fastdistill::adjoint_update:
//   v_new = v - softplus(raw_lr) * hv,   dlr = -sum(g * v).
// Stage 1 (one pass over the buffers): v_new, and one partial sum per block. Stage 2 (one block):
// adds the partials in a fixed order. The grid size depends only on n, so dlr is bitwise
// reproducible (no atomics).
#include "common.cuh"
#include "fastdistill/cuda_launch.h"

namespace fastdistill {
namespace cuda {
namespace {

constexpr int kReduceThreads = 1024;

template <typename T, int N>
__global__ void __launch_bounds__(kAdjointThreads)
    adjoint_stage1_kernel(T* __restrict__ v_new, const T* __restrict__ v,
                          const T* __restrict__ hv, const T* __restrict__ g,
                          const T* __restrict__ raw_lr, int64_t n,
                          typename OpMath<T>::type* __restrict__ partials) {
  using op_t = typename OpMath<T>::type;  // also the accumulator type
  const op_t lr = softplus<op_t>(to_op(raw_lr[0]));
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t nvec = n / N;
  op_t acc = op_t(0);
  if (N > 1) {
    const auto* vv = reinterpret_cast<const Vec<T, N>*>(v);
    const auto* hvv = reinterpret_cast<const Vec<T, N>*>(hv);
    const auto* gv = reinterpret_cast<const Vec<T, N>*>(g);
    auto* ov = reinterpret_cast<Vec<T, N>*>(v_new);
    for (int64_t i = tid; i < nvec; i += stride) {
      const Vec<T, N> a = vv[i];
      const Vec<T, N> b = hvv[i];
      const Vec<T, N> c = gv[i];
      Vec<T, N> o;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const op_t vi = to_op(a.v[k]);
        acc += to_op(c.v[k]) * vi;
        o.v[k] = from_op<T>(vi - lr * to_op(b.v[k]));
      }
      ov[i] = o;
    }
  }
  for (int64_t i = nvec * N + tid; i < n; i += stride) {
    const op_t vi = to_op(v[i]);
    acc += to_op(g[i]) * vi;
    v_new[i] = from_op<T>(vi - lr * to_op(hv[i]));
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    adjoint_stage2_kernel(const typename OpMath<T>::type* __restrict__ partials,
                          int64_t num_partials, T* __restrict__ dlr) {
  using op_t = typename OpMath<T>::type;
  op_t acc = op_t(0);
  for (int64_t i = threadIdx.x; i < num_partials; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) dlr[0] = from_op<T>(-acc);
}

template <typename T>
cudaError_t launch(const AdjointUpdateParams& p, cudaStream_t stream) {
  using op_t = typename OpMath<T>::type;
  constexpr int N = vec_width<T>();
  const bool vec = aligned16(p.v_new) && aligned16(p.v) && aligned16(p.hv) && aligned16(p.g);
  const int64_t blocks = adjoint_update_num_blocks(p.n);
  if (p.num_partials < blocks) return cudaErrorInvalidValue;
  auto* v_new = static_cast<T*>(p.v_new);
  const auto* v = static_cast<const T*>(p.v);
  const auto* hv = static_cast<const T*>(p.hv);
  const auto* g = static_cast<const T*>(p.g);
  const auto* raw = static_cast<const T*>(p.raw_lr);
  auto* partials = static_cast<op_t*>(p.partials);
  if (vec) {
    adjoint_stage1_kernel<T, N>
        <<<unsigned(blocks), kAdjointThreads, 0, stream>>>(v_new, v, hv, g, raw, p.n, partials);
  } else {
    adjoint_stage1_kernel<T, 1>
        <<<unsigned(blocks), kAdjointThreads, 0, stream>>>(v_new, v, hv, g, raw, p.n, partials);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  adjoint_stage2_kernel<T>
      <<<1, kReduceThreads, 0, stream>>>(partials, blocks, static_cast<T*>(p.dlr));
  return cudaGetLastError();
}

}  // namespace
}  // namespace cuda

cudaError_t launch_adjoint_update(const AdjointUpdateParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32:
      return cuda::launch<float>(p, stream);
    case DType::kFloat64:
      return cuda::launch<double>(p, stream);
    case DType::kFloat16:
      return cuda::launch<__half>(p, stream);
    case DType::kBFloat16:
      return cuda::launch<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastdistill
