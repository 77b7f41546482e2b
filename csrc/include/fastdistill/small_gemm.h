// Batched small matrix products on the CPU: out[b] (+)= a[b] @ m[b] (+ bias[b] broadcast over
// rows), for the tiny per-step linear layers of the fused inner step (10 images x a few hundred
// features), where a library GEMM call costs ~10x its arithmetic in setup and threading.
//
// Two register-blocked kernels cover the layouts those layers produce:
//   * "broadcast" (m has unit stride along its columns): a rank-1 update per k, A's entries
//     broadcast, 4 rows x 2 vectors of columns per block;
//   * "dot" (a's rows and m's columns both have unit stride along k, i.e. a @ W^T): 4 x 4 dot
//     products, vectorized along k.
// Any other layout, dtype or device, or a product large enough for the library GEMM to win,
// returns false and the caller uses ATen. Products over the same operands are always summed in
// the same order, whatever the thread count.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastdistill {

// out [B, M, N] with unit column stride (any batch/row strides, e.g. a slice of a flat parameter
// buffer), a [B, M, K], m [B, K, N], bias [B, N] or undefined. accumulate=false overwrites out.
// Returns false (out untouched) where the kernels do not apply.
bool small_bmm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& m,
                    const at::Tensor& bias, bool accumulate);

// The same products with ATen's as the fallback, so that they always happen:
// a @ m (+ bias on every row) as a new [B, M, N] tensor,
at::Tensor small_bmm_new(const at::Tensor& a, const at::Tensor& m, const at::Tensor& bias);
// and out (+)= a @ m for out as in small_bmm_into.
void small_bmm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& m,
                   bool accumulate);

}  // namespace fastdistill
