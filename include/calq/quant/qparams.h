#pragma once
// Scale and zero point from a range (docs/quantization.md, equations 1 and 4).

#include <ATen/core/Tensor.h>

#include <utility>

#include "calq/quant/quant_spec.h"

namespace calq {

/// Smallest scale ever produced: float32 epsilon, so an all-zero range gives a finite,
/// non-zero scale (never 0, inf or NaN).
constexpr double kMinScale = 1.1920928955078125e-07;

/// Scale and zero point for the range [min_val, max_val].
///
/// Symmetric (default, eq. 1): scale = max(|min|, |max|) / ((quant_max - quant_min) / 2),
/// zero_point = 0; for qint8 the divisor is 127.5. Affine (eq. 4):
/// scale = (max - min) / (quant_max - quant_min), zero_point = quant_min - round(min / scale),
/// with the range first widened to contain 0. Both are floored at kMinScale; with
/// spec.power_of_two() the scale is then rounded up to the next power of two.
///
/// min_val / max_val: same shape; one element (per-tensor) or one per channel. Any floating
/// dtype. Non-finite bounds are an error naming the offending value.
/// Returns scale (float32) and zero_point (int32), both shaped {numel(min_val)}.
std::pair<at::Tensor, at::Tensor> compute_qparams(const at::Tensor& min_val,
                                                  const at::Tensor& max_val, const QuantSpec& spec);

/// Rounds each scale up to 2^ceil(log2(scale)); scales must be positive and finite.
at::Tensor round_scale_to_power_of_two(const at::Tensor& scale);

}  // namespace calq
