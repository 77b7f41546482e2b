// fastdistill::soft_label_loss: plain types shared by the host code and the kernels (no torch
// headers: included by the .cu files).
//
// Per-example inner loss of dataset distillation (docs/algorithm.md §2) for logits z [N, K] and labels y:
//   soft:    l = -sum_k y_k log_softmax(z)_k      y [N, K], raw (unconstrained) label weights
//   softmax: l = -sum_k t_k log_softmax(z)_k      t = softmax(y), y [N, K]
//   binary:  l = softplus(z) - y z                BCE-with-logits, z [N, 1], y [N]
// Three ops, each one fused pass over the rows (one row per warp or thread block on CUDA, rows
// split into at::parallel_for chunks on CPU; log-sum-exp shifted by the row maximum):
//   forward:          loss [N]
//   backward:         (g dl/dz [N, K], g dl/dy like y) for the upstream gradient g [N]
//   double backward:  the vector-Jacobian product of `backward` for tangents u (of the logit
//                     gradient) and w (of the label gradient): (d/dg, d/dz, d/dy) of
//                     <backward_z, u> + <backward_y, w>. The d/dz part holds the Hessian-vector
//                     product H_zz u (soft: (sum_k y_k) (p u - p <p, u>), p = softmax(z)), the
//                     d/dy part the mixed product d/dy <dl/dz, u> that the adjoint sweep needs.
#pragma once

#include <cstdint>

#include "fastdistill/params.h"

namespace fastdistill {

enum class LabelKind : int32_t { kSoft = 0, kSoftmax = 1, kBinary = 2 };

// One parameter struct for the three ops; buffers an op does not use are null. All buffers are
// contiguous, of one dtype (float32 or float64), on one device. `labels`-shaped buffers are
// [rows, cols] (soft, softmax) or [rows] (binary, where cols == 1).
struct SoftLabelLossParams {
  const void* logits;     // [rows, cols]
  const void* labels;     // like labels
  const void* grad;       // [rows] upstream gradient of the loss (backward, double backward)
  const void* gg_logits;  // [rows, cols] tangent u of the logit gradient (double backward)
  const void* gg_labels;  // like labels: tangent w of the label gradient (double backward)
  void* out_rows;         // [rows]: the loss (forward) or d/dgrad (double backward)
  void* out_logits;       // [rows, cols]: d/dlogits (backward, double backward)
  void* out_labels;       // like labels: d/dlabels (backward, double backward)
  int64_t rows;
  int64_t cols;
  LabelKind kind;
  DType dtype;
};

// CPU: rows per at::parallel_for task are chosen so that a task touches about this many
// elements of each [rows, cols] buffer.
constexpr int64_t kSoftLabelCpuGrainElements = 16384;

// CUDA: blocks of kSoftLabelCudaThreads threads. Rows of up to kSoftLabelCudaWarpMaxCols
// columns take one warp each (8 rows per block), wider rows one whole block each; the threads of
// a row stride over its columns and reduce with shuffles (+ shared memory across warps) in a
// fixed order, so results are deterministic. Binary rows (one column) take one thread each.
constexpr int kSoftLabelCudaThreads = 256;
constexpr int64_t kSoftLabelCudaWarpMaxCols = 1024;
constexpr int64_t kSoftLabelCudaMaxBlocks = int64_t(1) << 20;  // grid-stride beyond this

}  // namespace fastdistill
