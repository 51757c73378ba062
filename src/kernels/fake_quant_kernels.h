#pragma once
// CPU kernels of the fake-quant methods (docs/quantization.md, equations 2, 3, 5, 6, 7).
// Internal to calq: the frontend (src/quant/fake_quant.cpp) validates and allocates; these
// functions only compute, with TORCH_INTERNAL_ASSERT on their preconditions.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "calq/quant/quant_spec.h"

namespace calq {
namespace kernels {

/// The quantization grid of one call, already validated.
struct Grid {
  /// float64 {C}, contiguous: finite, > 0, and 1 / scale finite in x's dtype.
  at::Tensor scale;
  /// int64 {C}, contiguous: zero points inside [quant_min, quant_max].
  at::Tensor zero_point;
  int64_t quant_min = 0;
  int64_t quant_max = 0;
  Rounding rounding = Rounding::half_to_even;
  /// Channel axis in [0, x.dim()) with C == x.size(axis), or -1 for one scale (C == 1).
  int64_t axis = -1;
};

/// Eq. 2: y = (clamp(round(x / scale) + zero_point, quant_min, quant_max) - zero_point) * scale.
/// x, y: contiguous, same shape, same dtype (float32 or float64); y is only written.
void fake_quant_forward(const at::Tensor& x, const Grid& grid, at::Tensor& y);

/// Eq. 5: dx = dy where quant_min <= round(x / scale) + zero_point <= quant_max, else 0.
/// x, dy, dx: contiguous, same shape and dtype; dx is only written.
void fake_quant_backward(const at::Tensor& x, const at::Tensor& dy, const Grid& grid,
                         at::Tensor& dx);

/// Eq. 5 for dx and eq. 6 without its grad factor for the scale:
/// dscale[c] = sum over the elements of channel c of dy * q'. dscale: float64 {C}, only written.
void lsq_backward(const at::Tensor& x, const at::Tensor& dy, const Grid& grid, at::Tensor& dx,
                  at::Tensor& dscale);

/// Eq. 7 forward: y = fake quantization of clamp(x, -alpha, alpha) with `scale`, zero point 0.
void pact_forward(const at::Tensor& x, double alpha, double scale, int64_t quant_min,
                  int64_t quant_max, Rounding rounding, at::Tensor& y);

/// Eq. 7 backward: dx = dy for -alpha < x < alpha, else 0; returns
/// dalpha = sum(dy * [x >= alpha]) - sum(dy * [x <= -alpha]). On an unsigned grid (eq. 7c,
/// clip [0, alpha]): dx = dy for 0 <= x < alpha, dalpha = sum(dy * [x >= alpha]).
double pact_backward(const at::Tensor& x, const at::Tensor& dy, double alpha, at::Tensor& dx,
                     bool unsigned_grid = false);

}  // namespace kernels
}  // namespace calq
