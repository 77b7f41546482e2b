// CPU kernel of fastdistill::inner_update: out = w - softplus(raw_lr) * g, one pass.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "fastdistill/inner_update_checks.h"
#include "fastdistill/cpu_target.h"
#include "fastdistill/math.h"
#include "fastdistill/params.h"

namespace fastdistill {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel task

template <typename scalar_t, typename opmath_t>
FD_ALWAYS_INLINE void inner_update_body(scalar_t* __restrict__ out, const scalar_t* __restrict__ w,
                                        const scalar_t* __restrict__ g, opmath_t lr, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<scalar_t>(static_cast<opmath_t>(w[i]) - lr * static_cast<opmath_t>(g[i]));
  }
}

// Non-template entry points so that each gets its own AVX-512/AVX2 clones.
FD_CPU_CLONES void inner_update_range(float* out, const float* w, const float* g, float lr,
                                      int64_t n) {
  inner_update_body(out, w, g, lr, n);
}
FD_CPU_CLONES void inner_update_range(double* out, const double* w, const double* g, double lr,
                                      int64_t n) {
  inner_update_body(out, w, g, lr, n);
}
void inner_update_range(c10::Half* out, const c10::Half* w, const c10::Half* g, float lr,
                        int64_t n) {
  inner_update_body(out, w, g, lr, n);
}
void inner_update_range(c10::BFloat16* out, const c10::BFloat16* w, const c10::BFloat16* g,
                        float lr, int64_t n) {
  inner_update_body(out, w, g, lr, n);
}

template <typename scalar_t>
void inner_update_cpu_kernel(const InnerUpdateParams& p) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* w = static_cast<const scalar_t*>(p.w);
  const auto* g = static_cast<const scalar_t*>(p.g);
  auto* out = static_cast<scalar_t*>(p.out);
  const opmath_t lr =
      softplus<opmath_t>(static_cast<opmath_t>(*static_cast<const scalar_t*>(p.raw_lr)));
  at::parallel_for(0, p.n, kGrain, [&](int64_t begin, int64_t end) {
    inner_update_range(out + begin, w + begin, g + begin, lr, end - begin);
  });
}

at::Tensor inner_update_cpu(const at::Tensor& w, const at::Tensor& g, const at::Tensor& raw_lr) {
  check_inner_update(w, g, raw_lr, c10::DeviceType::CPU);
  const at::Tensor wc = w.contiguous();
  const at::Tensor gc = g.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options());
  if (out.numel() == 0) {
    return out;
  }
  InnerUpdateParams p;
  p.out = out.data_ptr();
  p.w = wc.const_data_ptr();
  p.g = gc.const_data_ptr();
  p.raw_lr = raw_lr.const_data_ptr();
  p.n = out.numel();
  p.dtype = to_dtype(w.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "inner_update_cpu",
                                  [&] { inner_update_cpu_kernel<scalar_t>(p); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("inner_update", &inner_update_cpu);
}

}  // namespace fastdistill
