// Channel-vector kernels of fastdistill::conv_pool_* on CPU: one vector = `lanes` consecutive
// output channels of one conv-output position (LeNet's conv2: 16 channels, one AVX-512 float
// vector). They compute only the valid 2HP x 2WP positions, where the flattened-plane kernels of
// conv_pool.cpp compute whole padded rows ((KW - 1) / WR of them wasted: 29% for a 5x5 kernel
// on a 14-wide plane). Inputs are the same zero-padded planes (tap k of position j reads
// plane[off[k] + j]); weights come transposed, wt[k][lane] per channel vector.
//
// The forward's values are bit for bit those of the flattened kernels (the same k-ordered sum
// from the bias per output); the weight gradient sums each (channel, tap) over positions in
// order (another rounding than the flattened kernels' per-lane partials).
#pragma once

#include <cstdint>

namespace fastdistill {

// Whether the AVX-512 kernels of the conv + pool ops run: the channel-vector kernels here and
// the wide-tile and flipped input-gradient kernels of conv_pool.cpp (AVX-512, and
// FASTDISTILL_CONV_TILES is not 0).
bool conv_pool_wide_kernels();

// Whether the channel-vector kernels take a map where the wide kernels run (the caller asks
// conv_pool_wide_kernels() once per op call): whole vectors of output channels and a kernel
// width they are compiled for.
bool conv_pool_channel_tiles_fit(int64_t Cout, int64_t KW, int64_t lanes);

// One image and one channel vector, all pooled windows: conv + bias, 2x2 max (ATen's first
// maximum; NaN wins), code, optional ReLU. out/code rows `pooled` apart per channel.
// `plane`: the image's padded planes, WR wide; off: the K tap offsets.
void conv_pool_tiles_forward(const float* plane, const int64_t* off, int64_t K, int64_t WR,
                             int64_t HP, int64_t WP, const float* wt, const float* bias,
                             bool relu, float* out, uint8_t* code, int64_t pooled);
void conv_pool_tiles_forward(const double* plane, const int64_t* off, int64_t K, int64_t WR,
                             int64_t HP, int64_t WP, const double* wt, const double* bias,
                             bool relu, double* out, uint8_t* code, int64_t pooled);

// The conv value (+ bias, if given) at each window's coded position, 0 where inactive.
void conv_pool_tiles_gather(const float* plane, const int64_t* off, int64_t K, int64_t WR,
                            int64_t HP, int64_t WP, const float* wt, const float* bias,
                            const uint8_t* code, float* out, int64_t pooled);
void conv_pool_tiles_gather(const double* plane, const int64_t* off, int64_t K, int64_t WR,
                            int64_t HP, int64_t WP, const double* wt, const double* bias,
                            const uint8_t* code, double* out, int64_t pooled);

// dwt[k][lane] += sum_p gs[p][lane] * plane[pos[p] + off[k]] over the npos valid positions
// (pos: their flattened offsets; gs: the conv-output gradient there, one channel vector each).
// Taps go in blocks of kernel rows: off[k] = row_off[k / KW] + k % KW.
void conv_pool_tiles_wgrad(const float* plane, const int64_t* row_off, int64_t rows, int64_t KW,
                           const int64_t* pos, int64_t npos, const float* gs, float* dwt);
void conv_pool_tiles_wgrad(const double* plane, const int64_t* row_off, int64_t rows,
                           int64_t KW, const int64_t* pos, int64_t npos, const double* gs,
                           double* dwt);

}  // namespace fastdistill
