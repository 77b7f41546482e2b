// CPU kernels of fastdistill::local_response_norm and local_response_norm_backward: local
// response normalisation across channels (the AlexCifarNet layer), forward and first
// derivative each in one pass over the input, and the second derivatives (the engine's
// Hessian-vector products) in one more. The input is viewed as [N, C, M] (M: the product of
// the trailing dims); work is split into (n, block of M) tasks, each handling every channel of
// its block, so the window sums stay in cache and results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "fastdistill/local_response_norm_checks.h"

namespace fastdistill {
namespace {

constexpr int64_t kBlock = 256;  // positions of M per task

// b^-beta, with the AlexCifarNet exponent 0.75 as two square roots (vectorisable).
template <typename scalar_t>
inline scalar_t neg_pow(scalar_t b, scalar_t beta, bool three_quarters) {
  if (three_quarters) {
    const scalar_t r = std::sqrt(b);
    return scalar_t(1) / (r * std::sqrt(r));
  }
  return std::pow(b, -beta);
}

// base[c][m] = k + alpha / size * sum_{j in [c - lo, c + hi]} x[j][m]^2 for one block.
template <typename scalar_t>
void window_base(const scalar_t* x, int64_t C, int64_t M, int64_t m0, int64_t len,
                 const LrnParams& p, scalar_t* base) {
  const scalar_t scale = static_cast<scalar_t>(p.alpha / p.size);
  const scalar_t k = static_cast<scalar_t>(p.k);
  for (int64_t c = 0; c < C; ++c) {
    scalar_t* bc = base + c * len;
    std::fill(bc, bc + len, scalar_t(0));
    const int64_t j0 = std::max<int64_t>(0, c - p.lo), j1 = std::min<int64_t>(C - 1, c + p.hi);
    for (int64_t j = j0; j <= j1; ++j) {
      const scalar_t* xj = x + j * M + m0;
      for (int64_t m = 0; m < len; ++m) bc[m] += xj[m] * xj[m];
    }
    for (int64_t m = 0; m < len; ++m) bc[m] = k + scale * bc[m];
  }
}

template <typename scalar_t>
void forward_task(const scalar_t* x, scalar_t* y, int64_t C, int64_t M, int64_t m0, int64_t len,
                  const LrnParams& p, std::vector<scalar_t>& base) {
  window_base(x, C, M, m0, len, p, base.data());
  const scalar_t beta = static_cast<scalar_t>(p.beta);
  const bool tq = p.beta == 0.75;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xc = x + c * M + m0;
    const scalar_t* bc = base.data() + c * len;
    scalar_t* yc = y + c * M + m0;
    for (int64_t m = 0; m < len; ++m) yc[m] = xc[m] * neg_pow(bc[m], beta, tq);
  }
}

// gx[c] = gy[c] b[c]^-beta - (2 alpha beta / size) x[c] sum_{i in [c - hi, c + lo]} t[i],
// t[i] = gy[i] x[i] b[i]^(-beta - 1).
template <typename scalar_t>
void backward_task(const scalar_t* gy, const scalar_t* x, scalar_t* gx, int64_t C, int64_t M,
                   int64_t m0, int64_t len, const LrnParams& p, std::vector<scalar_t>& base,
                   std::vector<scalar_t>& t) {
  window_base(x, C, M, m0, len, p, base.data());
  const scalar_t beta = static_cast<scalar_t>(p.beta);
  const bool tq = p.beta == 0.75;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xc = x + c * M + m0;
    const scalar_t* gc = gy + c * M + m0;
    scalar_t* bc = base.data() + c * len;  // becomes b^-beta
    scalar_t* tc = t.data() + c * len;
    for (int64_t m = 0; m < len; ++m) {
      const scalar_t q = neg_pow(bc[m], beta, tq);
      tc[m] = gc[m] * xc[m] * q / bc[m];
      bc[m] = q;
    }
  }
  const scalar_t coef = static_cast<scalar_t>(2.0 * p.alpha * p.beta / p.size);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xc = x + c * M + m0;
    const scalar_t* gc = gy + c * M + m0;
    const scalar_t* qc = base.data() + c * len;
    scalar_t* out = gx + c * M + m0;
    for (int64_t m = 0; m < len; ++m) out[m] = gc[m] * qc[m];
    const int64_t i0 = std::max<int64_t>(0, c - p.hi), i1 = std::min<int64_t>(C - 1, c + p.lo);
    for (int64_t i = i0; i <= i1; ++i) {
      const scalar_t* ti = t.data() + i * len;
      for (int64_t m = 0; m < len; ++m) out[m] -= coef * xc[m] * ti[m];
    }
  }
}

// out[c][m] = sum_{j in [c - before, c + after]} a[j][m] * b[j][m] (a, b strided by M).
template <typename scalar_t>
void window_dot(const scalar_t* a, const scalar_t* b, int64_t C, int64_t M, int64_t len,
                int64_t before, int64_t after, scalar_t* out) {
  for (int64_t c = 0; c < C; ++c) {
    scalar_t* oc = out + c * len;
    std::fill(oc, oc + len, scalar_t(0));
    const int64_t j0 = std::max<int64_t>(0, c - before), j1 = std::min<int64_t>(C - 1, c + after);
    for (int64_t j = j0; j <= j1; ++j) {
      const scalar_t* aj = a + j * M;
      const scalar_t* bj = b + j * M;
      for (int64_t m = 0; m < len; ++m) oc[m] += aj[m] * bj[m];
    }
  }
}

// out[i][m] += coef * sum_{c in [i - before, i + after]} t[c][m] * x[i][m] (t: block-local).
template <typename scalar_t>
void add_window_sum(const scalar_t* t, const scalar_t* x, scalar_t coef, int64_t C, int64_t M,
                    int64_t len, int64_t before, int64_t after, scalar_t* out) {
  for (int64_t i = 0; i < C; ++i) {
    const int64_t c0 = std::max<int64_t>(0, i - before), c1 = std::min<int64_t>(C - 1, i + after);
    const scalar_t* xi = x + i * M;
    scalar_t* oi = out + i * M;
    for (int64_t c = c0; c <= c1; ++c) {
      const scalar_t* tc = t + c * len;
      for (int64_t m = 0; m < len; ++m) oi[m] += coef * tc[m] * xi[m];
    }
  }
}

// Second derivatives along u (= the cotangent of the backward's output): with b the window
// base, s_dot[c] = 2 alpha / size * sum_{j in window(c)} x[j] u[j],
//   d_grad = J u:  u[c] b[c]^-beta - beta x[c] b[c]^(-beta-1) s_dot[c]
//   d_x = H u (H: Hessian of <grad, y(x)>):
//     -beta gy[i] b[i]^(-beta-1) s_dot[i]
//     - (2 alpha beta / size) (u[i] sum_c p[c] + x[i] sum_c p_dot[c]),  c in [i - hi, i + lo],
//   p[c] = gy[c] x[c] b[c]^(-beta-1),
//   p_dot[c] = b[c]^(-beta-1) (gy[c] u[c] - (beta + 1) gy[c] x[c] s_dot[c] / b[c]).
template <typename scalar_t>
void backward_backward_task(const scalar_t* gy, const scalar_t* x, const scalar_t* u,
                            scalar_t* d_grad, scalar_t* d_x, int64_t C, int64_t M, int64_t m0,
                            int64_t len, const LrnParams& p, std::vector<scalar_t>& scratch) {
  scalar_t* base = scratch.data();
  scalar_t* sdot = base + C * len;
  scalar_t* pc = sdot + C * len;
  scalar_t* pdot = pc + C * len;
  window_base(x, C, M, m0, len, p, base);
  window_dot(x + m0, u + m0, C, M, len, p.lo, p.hi, sdot);
  const scalar_t beta = static_cast<scalar_t>(p.beta);
  const scalar_t two_a = static_cast<scalar_t>(2.0 * p.alpha / p.size);
  const bool tq = p.beta == 0.75;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t o = c * M + m0;
    const scalar_t* bc = base + c * len;
    scalar_t* sc = sdot + c * len;
    scalar_t* pcc = pc + c * len;
    scalar_t* pdc = pdot + c * len;
    for (int64_t m = 0; m < len; ++m) {
      const scalar_t b = bc[m], q = neg_pow(b, beta, tq), r = q / b;
      const scalar_t xs = x[o + m], us = u[o + m], gs = gy[o + m], sd = two_a * sc[m];
      d_grad[o + m] = us * q - beta * xs * r * sd;
      d_x[o + m] = -beta * gs * r * sd;
      pcc[m] = gs * xs * r;
      pdc[m] = r * (gs * us - (beta + scalar_t(1)) * gs * xs * sd / b);
    }
  }
  const scalar_t coef = static_cast<scalar_t>(-2.0 * p.alpha * p.beta / p.size);
  add_window_sum(pc, u + m0, coef, C, M, len, p.hi, p.lo, d_x + m0);
  add_window_sum(pdot, x + m0, coef, C, M, len, p.hi, p.lo, d_x + m0);
}

// Calls task(n, m0, len) over every (sample, block) pair in parallel.
template <typename F>
void for_blocks(int64_t N, int64_t M, const F& task) {
  const int64_t blocks = (M + kBlock - 1) / kBlock;
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / blocks, m0 = (i % blocks) * kBlock;
      task(n, m0, std::min(kBlock, M - m0));
    }
  });
}

at::Tensor local_response_norm_cpu(const at::Tensor& input, int64_t size, double alpha,
                                   double beta, double k) {
  const LrnParams p = check_local_response_norm("fastdistill::local_response_norm", input, size,
                                                alpha, beta, k, c10::DeviceType::CPU);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const int64_t N = x.size(0), C = x.size(1), M = x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_response_norm_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    for_blocks(N, M, [&](int64_t n, int64_t m0, int64_t len) {
      std::vector<scalar_t> base(C * len);
      forward_task(xp + n * C * M, yp + n * C * M, C, M, m0, len, p, base);
    });
  });
  return y;
}

at::Tensor local_response_norm_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                            int64_t size, double alpha, double beta, double k) {
  const char* op = "fastdistill::local_response_norm_backward";
  const LrnParams p =
      check_local_response_norm(op, input, size, alpha, beta, k, c10::DeviceType::CPU);
  check_like(op, "grad", grad, "input", input, /*same_shape=*/true);
  const at::Tensor x = input.contiguous();
  const at::Tensor g = grad.contiguous();
  at::Tensor gx = at::empty_like(x);
  if (x.numel() == 0) return gx;
  const int64_t N = x.size(0), C = x.size(1), M = x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_response_norm_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op_ = gx.mutable_data_ptr<scalar_t>();
    for_blocks(N, M, [&](int64_t n, int64_t m0, int64_t len) {
      std::vector<scalar_t> base(C * len), t(C * len);
      const int64_t off = n * C * M;
      backward_task(gp + off, xp + off, op_ + off, C, M, m0, len, p, base, t);
    });
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> local_response_norm_backward_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& gg, int64_t size,
    double alpha, double beta, double k) {
  const char* op = "fastdistill::local_response_norm_backward_backward";
  const LrnParams p =
      check_local_response_norm(op, input, size, alpha, beta, k, c10::DeviceType::CPU);
  check_like(op, "grad", grad, "input", input, /*same_shape=*/true);
  check_like(op, "gg", gg, "input", input, /*same_shape=*/true);
  const at::Tensor x = input.contiguous();
  const at::Tensor g = grad.contiguous();
  const at::Tensor u = gg.contiguous();
  at::Tensor d_grad = at::empty_like(x);
  at::Tensor d_x = at::empty_like(x);
  if (x.numel() == 0) return {d_grad, d_x};
  const int64_t N = x.size(0), C = x.size(1), M = x.numel() / (N * C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_response_norm_backward_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    scalar_t* dgp = d_grad.mutable_data_ptr<scalar_t>();
    scalar_t* dxp = d_x.mutable_data_ptr<scalar_t>();
    for_blocks(N, M, [&](int64_t n, int64_t m0, int64_t len) {
      std::vector<scalar_t> scratch(4 * C * len);
      const int64_t off = n * C * M;
      backward_backward_task(gp + off, xp + off, up + off, dgp + off, dxp + off, C, M, m0, len,
                             p, scratch);
    });
  });
  return {d_grad, d_x};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CPU, m) {
  m.impl("local_response_norm", &local_response_norm_cpu);
  m.impl("local_response_norm_backward", &local_response_norm_backward_cpu);
  m.impl("local_response_norm_backward_backward", &local_response_norm_backward_backward_cpu);
}

}  // namespace fastdistill
