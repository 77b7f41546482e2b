// CPU kernel of fastdistill::adjoint_update, fused in one pass over the buffers:
//   v_new = v - softplus(raw_lr) * hv,   dlr = -sum(g * v).
// The sum is deterministic whatever the thread count: fixed-size chunks, one partial per
// chunk (accumulated in double for float32/float64, in float for float16/bfloat16), partials
// added in chunk order.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "fastdistill/adjoint_update_checks.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/math.h"
#include "fastdistill/params.h"

namespace fastdistill {
namespace {

constexpr int64_t kChunk = 32768;  // elements per partial sum (and per task)
constexpr int kLanes = 8;          // independent accumulators, lets the compiler vectorize

// One chunk: v_new over [0, n) and the chunk's sum of g * v, in kLanes independent accumulators
// (fixed order, so deterministic) that the compiler turns into vector registers.
template <typename scalar_t, typename opmath_t, typename acc_t>
FD_ALWAYS_INLINE acc_t adjoint_update_body(scalar_t* __restrict__ v_new,
                                           const scalar_t* __restrict__ v,
                                           const scalar_t* __restrict__ hv,
                                           const scalar_t* __restrict__ g, opmath_t lr,
                                           int64_t n) {
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const opmath_t vi = static_cast<opmath_t>(v[i + k]);
      lanes[k] += static_cast<acc_t>(g[i + k]) * static_cast<acc_t>(vi);
      v_new[i + k] = static_cast<scalar_t>(vi - lr * static_cast<opmath_t>(hv[i + k]));
    }
  }
  for (int k = 0; i < n; ++i, ++k) {
    const opmath_t vi = static_cast<opmath_t>(v[i]);
    lanes[k] += static_cast<acc_t>(g[i]) * static_cast<acc_t>(vi);
    v_new[i] = static_cast<scalar_t>(vi - lr * static_cast<opmath_t>(hv[i]));
  }
  acc_t s = 0;
  for (int k = 0; k < kLanes; ++k) s += lanes[k];
  return s;
}

// Non-template entry points so that each gets its own AVX-512/AVX2 clones. Accumulators:
// double for float32/float64, float for float16/bfloat16 (at::acc_type on CPU).
FD_CPU_CLONES double adjoint_update_chunk(float* v_new, const float* v, const float* hv,
                                          const float* g, float lr, int64_t n) {
  return adjoint_update_body<float, float, double>(v_new, v, hv, g, lr, n);
}
FD_CPU_CLONES double adjoint_update_chunk(double* v_new, const double* v, const double* hv,
                                          const double* g, double lr, int64_t n) {
  return adjoint_update_body<double, double, double>(v_new, v, hv, g, lr, n);
}
float adjoint_update_chunk(c10::Half* v_new, const c10::Half* v, const c10::Half* hv,
                           const c10::Half* g, float lr, int64_t n) {
  return adjoint_update_body<c10::Half, float, float>(v_new, v, hv, g, lr, n);
}
float adjoint_update_chunk(c10::BFloat16* v_new, const c10::BFloat16* v, const c10::BFloat16* hv,
                           const c10::BFloat16* g, float lr, int64_t n) {
  return adjoint_update_body<c10::BFloat16, float, float>(v_new, v, hv, g, lr, n);
}

template <typename scalar_t>
void adjoint_update_cpu_kernel(const AdjointUpdateParams& p) {
  using opmath_t = at::opmath_type<scalar_t>;
  using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
  const auto* v = static_cast<const scalar_t*>(p.v);
  const auto* hv = static_cast<const scalar_t*>(p.hv);
  const auto* g = static_cast<const scalar_t*>(p.g);
  auto* v_new = static_cast<scalar_t*>(p.v_new);
  const opmath_t lr =
      softplus<opmath_t>(static_cast<opmath_t>(*static_cast<const scalar_t*>(p.raw_lr)));

  const int64_t num_chunks = (p.n + kChunk - 1) / kChunk;
  std::vector<acc_t> partial(static_cast<size_t>(num_chunks), acc_t(0));
  at::parallel_for(0, num_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t begin = c * kChunk;
      const int64_t len = std::min(p.n - begin, kChunk);
      partial[static_cast<size_t>(c)] = adjoint_update_chunk(v_new + begin, v + begin,
                                                             hv + begin, g + begin, lr, len);
    }
  });
  acc_t total = 0;
  for (const acc_t s : partial) total += s;
  *static_cast<scalar_t*>(p.dlr) = static_cast<scalar_t>(-total);
}

std::tuple<at::Tensor, at::Tensor> adjoint_update_cpu(const at::Tensor& v, const at::Tensor& hv,
                                                      const at::Tensor& g,
                                                      const at::Tensor& raw_lr) {
  check_adjoint_update(v, hv, g, raw_lr, c10::DeviceType::CPU);
  const at::Tensor vc = v.contiguous();
  const at::Tensor hvc = hv.contiguous();
  const at::Tensor gc = g.contiguous();
  at::Tensor v_new = at::empty(v.sizes(), v.options());
  at::Tensor dlr = at::empty({}, v.options());
  AdjointUpdateParams p;
  p.v_new = v_new.data_ptr();
  p.dlr = dlr.data_ptr();
  p.v = vc.const_data_ptr();
  p.hv = hvc.const_data_ptr();
  p.g = gc.const_data_ptr();
  p.raw_lr = raw_lr.const_data_ptr();
  p.n = v.numel();
  p.dtype = to_dtype(v.scalar_type());
  p.partials = nullptr;
  p.num_partials = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "adjoint_update_cpu",
                                  [&] { adjoint_update_cpu_kernel<scalar_t>(p); });
  return std::make_tuple(v_new, dlr);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("adjoint_update", &adjoint_update_cpu);
}

}  // namespace fastdistill
