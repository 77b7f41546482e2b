// Host-side input checks of fastdistill::nearest_embedding (CPU and CUDA entry points). Same
// rules, exception types and wording as fastdistill/ops/reference/nearest_embedding.py:
// dtype problems raise TypeError, shape/device/value problems ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>

#include "fastdistill/checks.h"
#include "fastdistill/nearest_embedding.h"

namespace fastdistill {

inline Metric parse_metric(c10::string_view metric) {
  if (metric == "euclidean") return Metric::kEuclidean;
  if (metric == "cosine") return Metric::kCosine;
  if (metric == "inner") return Metric::kInner;
  TORCH_CHECK_VALUE(false,
                    "fastdistill::nearest_embedding: `metric` must be 'euclidean', 'cosine' or "
                    "'inner', got '",
                    std::string(metric), "'");
  return Metric::kEuclidean;  // unreachable
}

// Validates the arguments and returns the metric.
inline Metric check_nearest_embedding(const at::Tensor& queries, const at::Tensor& table,
                                      int64_t k, c10::string_view metric_name,
                                      const std::optional<at::Tensor>& table_norms,
                                      c10::DeviceType device_type) {
  constexpr const char* op = "fastdistill::nearest_embedding";
  TORCH_CHECK_VALUE(queries.defined(), op, ": `queries` is an undefined tensor");
  TORCH_CHECK_TYPE(queries.scalar_type() == at::kFloat || queries.scalar_type() == at::kDouble,
                   op, ": `queries` must have dtype float32 or float64, got ",
                   queries.scalar_type(),
                   " (fastdistill.ops.nearest_embedding computes float16/bfloat16 in float32)");
  TORCH_CHECK_VALUE(queries.device().type() == device_type, op, ": `queries` must be on a ",
                    c10::DeviceTypeName(device_type, /*lower_case=*/true), " device, got ",
                    queries.device());
  TORCH_CHECK_VALUE(queries.dim() == 2, op, ": `queries` must be a 2-D tensor [N, D], got shape ",
                    shape_str(queries));
  check_like(op, "table", table, "queries", queries, /*same_shape=*/false);
  TORCH_CHECK_VALUE(table.dim() == 2, op, ": `table` must be a 2-D tensor [V, D], got shape ",
                    shape_str(table));
  TORCH_CHECK_VALUE(table.size(1) == queries.size(1), op,
                    ": `table` must have as many columns as `queries` (D = ", std::to_string(queries.size(1)),
                    "), got shape ", shape_str(table));
  const Metric metric = parse_metric(metric_name);
  const int64_t V = table.size(0);
  TORCH_CHECK_VALUE(k >= 1 && k <= V, op, ": k = ", std::to_string(k), " is out of range: need 1 <= k <= V = ",
                    std::to_string(V), " (the number of rows of `table`)");
  if (table_norms.has_value() && table_norms->defined()) {
    TORCH_CHECK_VALUE(metric != Metric::kInner, op,
                      ": `table_norms` must be None for metric 'inner' (it uses no norms)");
    const at::Tensor& n = *table_norms;
    check_like(op, "table_norms", n, "table", table, /*same_shape=*/false);
    TORCH_CHECK_VALUE(n.dim() == 1 && n.size(0) == V, op,
                      ": `table_norms` must have shape [V] = [", std::to_string(V), "], got shape ", shape_str(n));
  }
  return metric;
}

}  // namespace fastdistill
