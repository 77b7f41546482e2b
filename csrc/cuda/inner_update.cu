// CUDA kernel of fastdistill::inner_update: out = w - softplus(raw_lr) * g, one pass,
// 16-byte vector loads when every buffer is aligned.
#include "common.cuh"
#include "fastdistill/cuda_launch.h"

namespace fastdistill {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond this

template <typename T, int N>
__global__ void __launch_bounds__(kThreads)
    inner_update_kernel(T* __restrict__ out, const T* __restrict__ w, const T* __restrict__ g,
                        const T* __restrict__ raw_lr, int64_t n) {
  using op_t = typename OpMath<T>::type;
  const op_t lr = softplus<op_t>(to_op(raw_lr[0]));
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t nvec = n / N;
  if (N > 1) {
    const auto* wv = reinterpret_cast<const Vec<T, N>*>(w);
    const auto* gv = reinterpret_cast<const Vec<T, N>*>(g);
    auto* ov = reinterpret_cast<Vec<T, N>*>(out);
    for (int64_t i = tid; i < nvec; i += stride) {
      const Vec<T, N> a = wv[i];
      const Vec<T, N> b = gv[i];
      Vec<T, N> c;
#pragma unroll
      for (int k = 0; k < N; ++k) c.v[k] = from_op<T>(to_op(a.v[k]) - lr * to_op(b.v[k]));
      ov[i] = c;
    }
  }
  for (int64_t i = nvec * N + tid; i < n; i += stride) {
    out[i] = from_op<T>(to_op(w[i]) - lr * to_op(g[i]));
  }
}

template <typename T>
cudaError_t launch(const InnerUpdateParams& p, cudaStream_t stream) {
  constexpr int N = vec_width<T>();
  const bool vec = aligned16(p.out) && aligned16(p.w) && aligned16(p.g);
  const int64_t work = vec ? ceil_div(p.n, N) : p.n;
  int64_t blocks = ceil_div(work, kThreads);
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  auto* out = static_cast<T*>(p.out);
  const auto* w = static_cast<const T*>(p.w);
  const auto* g = static_cast<const T*>(p.g);
  const auto* raw = static_cast<const T*>(p.raw_lr);
  if (vec) {
    inner_update_kernel<T, N><<<unsigned(blocks), kThreads, 0, stream>>>(out, w, g, raw, p.n);
  } else {
    inner_update_kernel<T, 1><<<unsigned(blocks), kThreads, 0, stream>>>(out, w, g, raw, p.n);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace cuda

cudaError_t launch_inner_update(const InnerUpdateParams& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
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
