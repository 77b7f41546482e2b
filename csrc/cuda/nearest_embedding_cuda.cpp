// Host code of the CUDA fastdistill::nearest_embedding: validate, compute the norms, then for
// each [query block x table block] tile: the score tile with cuBLAS (at::mm_out, on the current
// stream) and the selection kernel that folds it into the running top-k (fast path, k <= 128),
// or keys + a stable segmented sort (slow path, larger k). Compiled as C++ (not by nvcc); only
// c10/cuda headers (no ATen/cuda, which needs the cusparse headers).
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gt.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "fastdistill/checks.h"
#include "fastdistill/nearest_embedding.h"
#include "fastdistill/nearest_embedding_checks.h"
#include "fastdistill/nearest_embedding_cuda.h"

namespace fastdistill {
namespace {

at::Tensor row_norms_cuda(const at::Tensor& x, bool squared, cudaStream_t stream) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  RowNormsParams p;
  p.x = x.const_data_ptr();
  p.out = out.data_ptr();
  p.rows = x.size(0);
  p.dim = x.size(1);
  p.squared = squared;
  p.dtype = to_dtype(x.scalar_type());
  C10_CUDA_CHECK(launch_row_norms(p, stream));
  return out;
}

at::Tensor aux_from_norms(const at::Tensor& norms, Metric metric) {
  if (metric == Metric::kEuclidean) return norms.contiguous();
  return at::where(at::gt(norms, 0), at::reciprocal(norms), at::zeros_like(norms)).contiguous();
}

std::tuple<at::Tensor, at::Tensor> nearest_embedding_cuda(
    const at::Tensor& queries, const at::Tensor& table, int64_t k, c10::string_view metric_name,
    const std::optional<at::Tensor>& table_norms) {
  const Metric metric = check_nearest_embedding(queries, table, k, metric_name, table_norms,
                                                c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(queries.device());
  // detach: internal products must not record autograd history (the op is not differentiable).
  const at::Tensor q = queries.detach().contiguous();
  const at::Tensor t = table.detach().contiguous();
  const int64_t N = q.size(0);
  const int64_t V = t.size(0);
  at::Tensor values = at::empty({N, k}, q.options());
  at::Tensor indices = at::empty({N, k}, q.options().dtype(at::kLong));
  if (N == 0) return std::make_tuple(values, indices);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const DType dtype = to_dtype(q.scalar_type());

  at::Tensor q_aux, t_aux;
  if (metric != Metric::kInner) {
    const bool squared = metric == Metric::kEuclidean;
    const at::Tensor tn = table_norms.has_value() && table_norms->defined()
                              ? table_norms->detach().contiguous()
                              : row_norms_cuda(t, squared, stream);
    t_aux = aux_from_norms(tn, metric);
    q_aux = aux_from_norms(row_norms_cuda(q, squared, stream), metric);
  }

  const int64_t bq = std::min(kNearestCudaQueryBlock, N);
  const int64_t bv = std::min(kNearestCudaTableBlock, V);
  at::Tensor tile_buf = at::empty({bq * bv}, q.options());
  const bool fast = k <= kNearestCudaFastMaxK;

  for (int64_t i0 = 0; i0 < N; i0 += bq) {
    const int64_t rows = std::min(bq, N - i0);
    const at::Tensor qb = q.narrow(0, i0, rows);
    at::Tensor state_keys, state_idx;  // slow path: running top-k of this block
    for (int64_t j0 = 0; j0 < V; j0 += bv) {
      const int64_t w = std::min(bv, V - j0);
      at::Tensor tile = tile_buf.narrow(0, 0, rows * w).view({rows, w});
      if (q.size(1) == 0) {
        tile.zero_();
      } else {
        at::mm_out(tile, qb, t.narrow(0, j0, w).t());
      }
      const bool last = j0 + w == V;
      if (fast) {
        NearestTileParams p;
        p.scores = tile.const_data_ptr();
        p.ld = w;
        p.rows = rows;
        p.cols = w;
        p.col0 = j0;
        p.q_aux = q_aux.defined() ? q_aux.narrow(0, i0, rows).const_data_ptr() : nullptr;
        p.t_aux = t_aux.defined() ? t_aux.narrow(0, j0, w).const_data_ptr() : nullptr;
        p.keys = values.narrow(0, i0, rows).data_ptr();
        p.idx = indices.narrow(0, i0, rows).data_ptr<int64_t>();
        p.k = k;
        p.metric = metric;
        p.dtype = dtype;
        p.last = last;
        C10_CUDA_CHECK(launch_nearest_select_tile(p, stream));
        continue;
      }
      // Slow path: keys in place, then a stable sort of [running top-k | tile] per row. The
      // running entries come first and have lower indices, the tile's are in index order, so
      // the stable sort orders equal keys by index.
      NearestKeysParams kp;
      kp.scores = tile.data_ptr();
      kp.ld = w;
      kp.rows = rows;
      kp.cols = w;
      kp.q_aux = q_aux.defined() ? q_aux.narrow(0, i0, rows).const_data_ptr() : nullptr;
      kp.t_aux = t_aux.defined() ? t_aux.narrow(0, j0, w).const_data_ptr() : nullptr;
      kp.metric = metric;
      kp.dtype = dtype;
      C10_CUDA_CHECK(launch_nearest_scores_to_keys(kp, stream));
      at::Tensor cols = at::arange(j0, j0 + w, indices.options()).unsqueeze(0).expand({rows, w});
      at::Tensor all_keys = state_keys.defined() ? at::cat({state_keys, tile}, 1) : tile;
      at::Tensor all_idx = state_idx.defined() ? at::cat({state_idx, cols}, 1) : cols;
      auto sorted = at::sort(all_keys, /*stable=*/true, /*dim=*/1, /*descending=*/false);
      const int64_t keep = std::min<int64_t>(k, all_keys.size(1));
      state_keys = std::get<0>(sorted).narrow(1, 0, keep).contiguous();
      state_idx = all_idx.gather(1, std::get<1>(sorted).narrow(1, 0, keep)).contiguous();
      if (last) {
        NearestFinalizeParams fp;
        fp.keys = state_keys.const_data_ptr();
        fp.idx = state_idx.const_data_ptr<int64_t>();
        fp.values = values.narrow(0, i0, rows).data_ptr();
        fp.out_idx = indices.narrow(0, i0, rows).data_ptr<int64_t>();
        fp.rows = rows;
        fp.k = k;
        fp.metric = metric;
        fp.dtype = dtype;
        C10_CUDA_CHECK(launch_nearest_finalize(fp, stream));
      }
    }
  }
  return std::make_tuple(values, indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdistill, CUDA, m) {
  m.impl("nearest_embedding", &nearest_embedding_cuda);
}

}  // namespace fastdistill
