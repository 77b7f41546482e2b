// Layer record codes of fastdistill::seq_step's `spec` (csrc/cpu/seq_step.cpp). The Python side
// is fastdistill.engine.fused.layers.LayerKind; tests/engine/test_layer_kinds.py keeps the two
// equal (one `Name = N,` per line below).
#pragma once

#include <cstdint>

namespace fastdistill {

enum class LayerKind : int64_t {
  ConvPool = 1,  // w_off b_off Cout Cin KH KW ph pw relu: conv2d (stride 1) + 2x2 max pool
  Flatten = 2,   // (no fields)
  Linear = 3,    // w_off b_off out in
  ReLU = 4,      // (no fields)
  Tanh = 5,      // (no fields)
};

}  // namespace fastdistill
