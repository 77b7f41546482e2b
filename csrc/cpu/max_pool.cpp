// CPU kernel of fastdistill::max_pool2d: 2-D max pooling of contiguous [N, C, H, W] planes with
// ATen's indices (flat h * W + w per plane) and its choice among ties (the first maximum in
// row-major window order; a NaN wins, the last one seen). ATen's own kernel for this layout
// walks each window with per-element index arithmetic and NaN tests and runs ~15x slower than
// its channels-last kernel; here the interior of each output row takes a branch-light path
// and only the border windows are clipped. The backward scatters in ATen's order; its own
// derivative is a gather (Python side), so every derivative order matches ATen's.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>

#include "fastdistill/cpu_target.h"
#include "fastdistill/max_pool_checks.h"

namespace fastdistill {
namespace {

// Output columns [ow0, ow1) of one output row: input rows [h0, h1), windows clipped to the
// plane.
template <typename scalar_t>
FD_ALWAYS_INLINE void pool_row(const scalar_t* x, scalar_t* y, int64_t* idx, int64_t h0, int64_t h1,
              int64_t ow0, int64_t ow1, const PoolParams& p) {
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const int64_t w0 = std::max<int64_t>(ow * p.sw - p.pw, 0);
    const int64_t w1 = std::min<int64_t>(ow * p.sw - p.pw + p.kw, p.W);
    int64_t best = h0 * p.W + w0;
    scalar_t m = -std::numeric_limits<scalar_t>::infinity();
    for (int64_t h = h0; h < h1; ++h) {
      const scalar_t* row = x + h * p.W;
      for (int64_t w = w0; w < w1; ++w) {
        const scalar_t v = row[w];
        if (v > m || std::isnan(v)) {
          m = v;
          best = h * p.W + w;
        }
      }
    }
    y[ow] = m;
    idx[ow] = best;
  }
}

// Output columns [a, b) of row oh whose windows lie inside the plane's columns: one pass per
// window position over all of them (vectorisable, no branches), in the scalar path's order.
template <typename scalar_t>
FD_ALWAYS_INLINE void pool_interior(const scalar_t* x, scalar_t* y, int64_t* idx, int64_t h0,
                                    int64_t h1, int64_t a, int64_t b, const PoolParams& p) {
  const int64_t sw = p.sw, n = b - a;
  if (n <= 0) return;
  scalar_t* __restrict m = y + a;
  int64_t* __restrict best = idx + a;
  for (int64_t j = 0; j < n; ++j) {
    m[j] = -std::numeric_limits<scalar_t>::infinity();
    best[j] = h0 * p.W + (a + j) * sw - p.pw;
  }
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t dw = 0; dw < p.kw; ++dw) {
      const int64_t col0 = a * sw - p.pw + dw;
      const scalar_t* __restrict row = x + h * p.W + col0;
      const int64_t base = h * p.W + col0;
      for (int64_t j = 0; j < n; ++j) {
        const scalar_t v = row[j * sw];
        const bool take = (v > m[j]) | (v != v);
        m[j] = take ? v : m[j];
        best[j] = take ? base + j * sw : best[j];
      }
    }
  }
}

template <typename scalar_t>
FD_ALWAYS_INLINE void pool_plane_body(const scalar_t* x, scalar_t* y, int64_t* idx,
                                      const PoolParams& p) {
  // Interior columns: ow * sw - pw >= 0 and ow * sw - pw + kw <= W.
  const int64_t a = std::min<int64_t>((p.pw + p.sw - 1) / p.sw, p.OW);
  const int64_t b = std::max<int64_t>(a, std::min<int64_t>(p.OW, (p.W + p.pw - p.kw) / p.sw + 1));
  for (int64_t oh = 0; oh < p.OH; ++oh) {
    const int64_t h0 = std::max<int64_t>(oh * p.sh - p.ph, 0);
    const int64_t h1 = std::min<int64_t>(oh * p.sh - p.ph + p.kh, p.H);
    scalar_t* yr = y + oh * p.OW;
    int64_t* ir = idx + oh * p.OW;
    pool_row(x, yr, ir, h0, h1, 0, a, p);
    pool_interior(x, yr, ir, h0, h1, a, b, p);
    pool_row(x, yr, ir, h0, h1, b, p.OW, p);
  }
}

FD_CPU_CLONES void pool_plane(const float* x, float* y, int64_t* idx, const PoolParams& p) {
  pool_plane_body(x, y, idx, p);
}
FD_CPU_CLONES void pool_plane(const double* x, double* y, int64_t* idx, const PoolParams& p) {
  pool_plane_body(x, y, idx, p);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input,
                                                  c10::IntArrayRef kernel_size,
                                                  c10::IntArrayRef stride,
                                                  c10::IntArrayRef padding) {
  const PoolParams p = check_max_pool2d("fastdistill::max_pool2d", input, kernel_size, stride,
                                        padding, c10::DeviceType::CPU);
  const at::Tensor x = input.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[shape.size() - 2] = p.OH;
  shape[shape.size() - 1] = p.OW;
  at::Tensor y = at::empty(shape, x.options());
  at::Tensor idx = at::empty(shape, x.options().dtype(at::kLong));
  const int64_t planes = x.numel() / std::max<int64_t>(p.H * p.W, 1);
  if (y.numel() == 0) return {y, idx};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "max_pool2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    int64_t* ip = idx.mutable_data_ptr<int64_t>();
    const int64_t in_plane = p.H * p.W, out_plane = p.OH * p.OW;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(in_plane, 1));
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        pool_plane(xp + i * in_plane, yp + i * out_plane, ip + i * out_plane, p);
      }
    });
  });
  return {y, idx};
}

// d input: each output's gradient added at its index, outputs in order (ATen's order, so the
// sums where windows overlap are ATen's bit for bit). Every index is checked against the plane.
at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad, const at::Tensor& indices,
                                   const at::Tensor& input) {
  const char* op = "fastdistill::max_pool2d_backward";
  check_float_input(op, "input", input, c10::DeviceType::CPU);
  TORCH_CHECK_VALUE(indices.defined(), op, ": `indices` is an undefined tensor");
  TORCH_CHECK_VALUE(input.dim() == 3 || input.dim() == 4, op,
                    ": `input` must be [C, H, W] or [N, C, H, W], got shape ", shape_str(input));
  check_like(op, "grad", grad, "input", input, /*same_shape=*/false);
  TORCH_CHECK_VALUE(grad.dim() == input.dim() && indices.sizes() == grad.sizes(), op,
                    ": `grad` and `indices` must have the pooled shape, got ", shape_str(grad),
                    " and ", shape_str(indices));
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, op, ": `indices` must be int64, got ",
                   indices.scalar_type());
  for (int64_t d = 0; d + 2 < input.dim(); ++d) {
    TORCH_CHECK_VALUE(grad.size(d) == input.size(d), op, ": `grad` ", shape_str(grad),
                      " does not pool `input` ", shape_str(input));
  }
  const at::Tensor g = grad.contiguous();
  const at::Tensor ix = indices.contiguous();
  at::Tensor gx = at::zeros_like(input, at::MemoryFormat::Contiguous);
  const int64_t plane = input.size(-2) * input.size(-1);
  const int64_t out_plane = grad.size(-2) * grad.size(-1);
  const int64_t planes = plane == 0 ? 0 : input.numel() / plane;
  if (planes == 0 || out_plane == 0) return gx;
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "max_pool2d_backward_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int64_t* ip = ix.const_data_ptr<int64_t>();
    scalar_t* op_ = gx.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / plane);
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* gi = gp + i * out_plane;
        const int64_t* ii = ip + i * out_plane;
        scalar_t* oi = op_ + i * plane;
        for (int64_t j = 0; j < out_plane; ++j) {
          const int64_t k = ii[j];
          if (k < 0 || k >= plane) {
            bad = true;
            return;
          }
          oi[k] += gi[j];
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!bad, op, ": `indices` holds a position outside the ",
                    std::to_string(plane), "-element plane");
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
}

}  // namespace fastdistill
