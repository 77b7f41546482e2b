// CUDA kernels of fastdistill::conv_pool_{forward,gather,backward} (see conv_pool.h).
//
// forward/gather: one thread per pooled output (four or one convolution values). backward:
// the input gradient by gathering, one thread per input element, over the taps whose window
// maximum sits at the right place (no atomics); the weight and bias gradients one block per
// weight element (and one per bias), each a fixed-order block reduction over images and
// windows. Everything is deterministic.
#include "common.cuh"
#include "fastdistill/conv_pool.h"
#include "fastdistill/conv_pool_cuda.h"

namespace fastdistill {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct Dims {
  int64_t N, G, B, Cin, H, W, Cout, KH, KW, ph, pw, HP, WP;
};

__host__ __device__ inline Dims dims_of(const ConvPoolDims& d) {
  return Dims{d.N, d.G, d.B, d.Cin, d.H, d.W, d.Cout, d.KH, d.KW, d.ph, d.pw, d.HP, d.WP};
}

// Convolution value of output channel (b, co) at conv position (y, x) of image n.
template <typename T>
__device__ __forceinline__ T conv_at(const T* __restrict__ x, const T* __restrict__ w,
                                     const Dims& d, int64_t n, int64_t bi, int64_t co,
                                     int64_t y, int64_t xx) {
  const int64_t g = d.G == 1 ? 0 : bi;
  const T* xs = x + (n * d.G + g) * d.Cin * d.H * d.W;
  const T* ws = w + (bi * d.Cout + co) * d.Cin * d.KH * d.KW;
  T acc = T(0);
  for (int64_t ci = 0; ci < d.Cin; ++ci) {
    for (int64_t ky = 0; ky < d.KH; ++ky) {
      const int64_t iy = y + ky - d.ph;
      if (iy < 0 || iy >= d.H) continue;
      for (int64_t kx = 0; kx < d.KW; ++kx) {
        const int64_t ix = xx + kx - d.pw;
        if (ix < 0 || ix >= d.W) continue;
        acc += ws[(ci * d.KH + ky) * d.KW + kx] * xs[(ci * d.H + iy) * d.W + ix];
      }
    }
  }
  return acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                   T* __restrict__ out, uint8_t* __restrict__ code, ConvPoolDims dd, bool relu) {
  const Dims d = dims_of(dd);
  const int64_t total = d.N * d.B * d.Cout * d.HP * d.WP;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i % d.WP;
    const int64_t r = (i / d.WP) % d.HP;
    const int64_t co = (i / (d.WP * d.HP)) % d.Cout;
    const int64_t bi = (i / (d.WP * d.HP * d.Cout)) % d.B;
    const int64_t n = i / (d.WP * d.HP * d.Cout * d.B);
    const T bias = b != nullptr ? b[bi * d.Cout + co] : T(0);
    T best = T(0);
    int arg = 0;
    for (int a = 0; a < 4; ++a) {
      const T v = conv_at(x, w, d, n, bi, co, 2 * r + (a >> 1), 2 * q + (a & 1)) + bias;
      if (a == 0 || v > best || isnan(v)) {  // first maximum in scan order; NaN wins
        best = v;
        arg = a;
      }
    }
    if (relu && !(best > T(0))) {
      out[i] = T(0);
      code[i] = kConvPoolInactive;
    } else {
      out[i] = best;
      code[i] = static_cast<uint8_t>(arg);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                  const uint8_t* __restrict__ code, T* __restrict__ out, ConvPoolDims dd) {
  const Dims d = dims_of(dd);
  const int64_t total = d.N * d.B * d.Cout * d.HP * d.WP;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint8_t a = code[i];
    if (a == kConvPoolInactive) {
      out[i] = T(0);
      continue;
    }
    const int64_t q = i % d.WP;
    const int64_t r = (i / d.WP) % d.HP;
    const int64_t co = (i / (d.WP * d.HP)) % d.Cout;
    const int64_t bi = (i / (d.WP * d.HP * d.Cout)) % d.B;
    const int64_t n = i / (d.WP * d.HP * d.Cout * d.B);
    const T bias = b != nullptr ? b[bi * d.Cout + co] : T(0);
    out[i] = conv_at(x, w, d, n, bi, co, 2 * r + (a >> 1), 2 * q + (a & 1)) + bias;
  }
}

// dx[n, g, ci, iy, ix] = sum over nets of the group, channels and taps whose conv position is
// its window's (active) maximum, of grad * w.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_input_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                          const uint8_t* __restrict__ code, T* __restrict__ dx,
                          ConvPoolDims dd) {
  const Dims d = dims_of(dd);
  const int64_t total = d.N * d.G * d.Cin * d.H * d.W;
  const int64_t pooled = d.HP * d.WP;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ix = i % d.W;
    const int64_t iy = (i / d.W) % d.H;
    const int64_t ci = (i / (d.W * d.H)) % d.Cin;
    const int64_t g = (i / (d.W * d.H * d.Cin)) % d.G;
    const int64_t n = i / (d.W * d.H * d.Cin * d.G);
    const int64_t b0 = d.G == 1 ? 0 : g;
    const int64_t b1 = d.G == 1 ? d.B : g + 1;
    T acc = T(0);
    for (int64_t bi = b0; bi < b1; ++bi) {
      for (int64_t co = 0; co < d.Cout; ++co) {
        const int64_t base = ((n * d.B + bi) * d.Cout + co) * pooled;
        const T* ws = w + ((bi * d.Cout + co) * d.Cin + ci) * d.KH * d.KW;
        for (int64_t ky = 0; ky < d.KH; ++ky) {
          const int64_t y = iy + d.ph - ky;
          if (y < 0 || y >= 2 * d.HP) continue;
          for (int64_t kx = 0; kx < d.KW; ++kx) {
            const int64_t xx = ix + d.pw - kx;
            if (xx < 0 || xx >= 2 * d.WP) continue;
            const int64_t cell = base + (y >> 1) * d.WP + (xx >> 1);
            if (code[cell] == static_cast<uint8_t>((y & 1) * 2 + (xx & 1))) {
              acc += grad[cell] * ws[ky * d.KW + kx];
            }
          }
        }
      }
    }
    dx[i] = acc;
  }
}

// One block per weight element (b, co, k) plus one per bias (b, co) (k == K): a fixed-order
// reduction over images and windows.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_weight_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                           const uint8_t* __restrict__ code, T* __restrict__ dw,
                           T* __restrict__ db, ConvPoolDims dd) {
  const Dims d = dims_of(dd);
  const int64_t K = d.Cin * d.KH * d.KW;
  const int64_t k = blockIdx.x % (K + 1);
  const int64_t co = (blockIdx.x / (K + 1)) % d.Cout;
  const int64_t bi = blockIdx.x / ((K + 1) * d.Cout);
  const bool is_bias = k == K;
  if (is_bias ? db == nullptr : dw == nullptr) return;
  const int64_t ci = is_bias ? 0 : k / (d.KH * d.KW);
  const int64_t ky = is_bias ? 0 : (k / d.KW) % d.KH;
  const int64_t kx = is_bias ? 0 : k % d.KW;
  const int64_t g = d.G == 1 ? 0 : bi;
  const int64_t pooled = d.HP * d.WP;
  const int64_t total = d.N * pooled;
  T acc = T(0);
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t n = i / pooled;
    const int64_t cell = i % pooled;
    const int64_t idx = ((n * d.B + bi) * d.Cout + co) * pooled + cell;
    const uint8_t a = code[idx];
    if (a == kConvPoolInactive) continue;
    if (is_bias) {
      acc += grad[idx];
      continue;
    }
    const int64_t iy = 2 * (cell / d.WP) + (a >> 1) + ky - d.ph;
    const int64_t ix = 2 * (cell % d.WP) + (a & 1) + kx - d.pw;
    if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) continue;
    acc += grad[idx] * x[(((n * d.G + g) * d.Cin + ci) * d.H + iy) * d.W + ix];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    if (is_bias) {
      db[bi * d.Cout + co] = acc;
    } else {
      dw[(bi * d.Cout + co) * K + k] = acc;
    }
  }
}

int64_t grid_for(int64_t total) {
  int64_t blocks = ceil_div(total, kThreads);
  if (blocks < 1) blocks = 1;
  if (blocks > 65535) blocks = 65535;
  return blocks;
}

template <typename T>
cudaError_t forward(const ConvPoolParams& p, cudaStream_t stream) {
  const auto& d = p.d;
  const int64_t total = d.N * d.B * d.Cout * d.HP * d.WP;
  forward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.w), static_cast<const T*>(p.b),
      static_cast<T*>(p.out), p.code_out, d, p.relu);
  return cudaGetLastError();
}

template <typename T>
cudaError_t gather(const ConvPoolParams& p, cudaStream_t stream) {
  const auto& d = p.d;
  const int64_t total = d.N * d.B * d.Cout * d.HP * d.WP;
  gather_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.w), static_cast<const T*>(p.b), p.code,
      static_cast<T*>(p.out), d);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const ConvPoolParams& p, cudaStream_t stream) {
  const auto& d = p.d;
  if (p.dx != nullptr) {
    const int64_t total = d.N * d.G * d.Cin * d.H * d.W;
    backward_input_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
        static_cast<const T*>(p.grad), static_cast<const T*>(p.w), p.code, static_cast<T*>(p.dx),
        d);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (p.dw != nullptr || p.db != nullptr) {
    const int64_t blocks = d.B * d.Cout * (d.Cin * d.KH * d.KW + 1);
    backward_weight_kernel<T><<<blocks, kThreads, 0, stream>>>(
        static_cast<const T*>(p.grad), static_cast<const T*>(p.x), p.code,
        static_cast<T*>(p.dw), static_cast<T*>(p.db), d);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace cuda

cudaError_t launch_conv_pool_forward(const ConvPoolParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32:
      return cuda::forward<float>(p, stream);
    case DType::kFloat64:
      return cuda::forward<double>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_conv_pool_gather(const ConvPoolParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32:
      return cuda::gather<float>(p, stream);
    case DType::kFloat64:
      return cuda::gather<double>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_conv_pool_backward(const ConvPoolParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32:
      return cuda::backward<float>(p, stream);
    case DType::kFloat64:
      return cuda::backward<double>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace fastdistill
