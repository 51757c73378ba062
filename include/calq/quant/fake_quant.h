#pragma once
// The three fake-quant methods as differentiable functions (docs/quantization.md, section 3).

#include <ATen/core/Tensor.h>

#include "calq/quant/quant_spec.h"

namespace calq {

/// Fake quantization with a fixed scale (eq. 2):
///   y = (clamp(round(x / scale) + zero_point, quant_min, quant_max) - zero_point) * scale
/// Backward (straight-through with saturation mask, eq. 5): dx = dy where
/// quant_min <= round(x / scale) + zero_point <= quant_max, else 0. No gradient to scale.
///
/// x: float32 or float64, any shape, any strides (non-contiguous inputs are copied once).
/// scale: float, {1} (per-tensor) or {C} with C = x.size(spec.ch_axis()) (per-channel);
/// every scale must be finite and > 0. zero_point: integer or float with integral values in
/// [quant_min, quant_max], same number of elements as scale; an undefined tensor means 0.
/// NaN in x gives NaN out and zero gradient; +-Inf saturate to quant_max / quant_min * scale
/// with zero gradient. An empty x gives an empty y.
at::Tensor fake_quantize(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                         const QuantSpec& spec);

/// Learned Step Size Quantization (Esser et al., 2019): forward as fake_quantize; scale is
/// learned. dL/dscale = grad_factor * sum(dy * q'), with q' = round(x/s) - x/s inside the
/// range and (quant_min - zero_point) or (quant_max - zero_point) where clamped (eq. 6).
/// grad_factor <= 0 selects the paper's g = 1 / sqrt(n * quant_max), n being the number of
/// elements that share one scale (x.numel() per-tensor, x.numel() / C per-channel).
/// zero_point is not learned. Shapes, dtypes and non-finite x as fake_quantize; NaN elements
/// add nothing to dL/dscale, +-Inf elements count as clamped. The scale gradient has scale's
/// shape and dtype and does not depend on the number of threads.
at::Tensor lsq_fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                             const at::Tensor& zero_point, const QuantSpec& spec,
                             double grad_factor = -1.0);

/// PACT (Choi et al., 2018), symmetric: c = clamp(x, -alpha, alpha), then fake quantization
/// with scale = alpha / ((quant_max - quant_min) / 2) and zero point 0 (eq. 7).
/// Backward: dx = dy for -alpha < x < alpha, else 0; dalpha = sum(dy * [x >= alpha]) -
/// sum(dy * [x <= -alpha]). alpha: one element, finite, > 0. Per-tensor, symmetric only.
/// With spec.power_of_two() alpha is first moved onto the power-of-two grid (eq. 7b):
/// scale = power_of_two_scale(alpha / half_steps, nearest), clip at alpha' = scale * half_steps;
/// the gradient reaches alpha straight through (dalpha computed at alpha'). NaN x gives NaN and
/// no gradient; +Inf counts as x >= alpha, -Inf as x <= -alpha.
/// On an unsigned grid (spec.unsigned_grid(), eq. 7c; the original PACT for non-negative
/// activations): c = clamp(x, 0, alpha), scale = alpha / (quant_max - quant_min); dx = dy for
/// 0 <= x < alpha, dalpha = sum(dy * [x >= alpha]).
at::Tensor pact_fake_quantize(const at::Tensor& x, const at::Tensor& alpha, const QuantSpec& spec);

/// The scale PACT uses for `alpha` (eq. 7 / 7b): alpha / pact_steps(spec), on the
/// power-of-two grid (nearest, clamped) when spec.power_of_two(). alpha finite and > 0.
double pact_scale(double alpha, const QuantSpec& spec);
/// The number of steps alpha spans: (quant_max - quant_min) / 2 on a signed grid (alpha maps
/// to half of them), quant_max - quant_min on an unsigned one (eq. 7c: the clip is [0, alpha]).
double pact_steps(const QuantSpec& spec);

/// A power-of-two scale learned through its base-2 logarithm (eq. 6b; lsq under the bernoulli
/// march, as in TQT, Jain et al. 2019): forward 2^k with k = floor(log2_scale + 0.5) clamped
/// to [kPowerOfTwoMinExponent, kPowerOfTwoMaxExponent]; backward straight through the
/// rounding: dL/dlog2_scale = dL/dscale * 2^k * ln 2. log2_scale: float tensor of any shape,
/// finite values (non-finite values are an error naming the index).
at::Tensor learned_power_of_two_scale(const at::Tensor& log2_scale);

}  // namespace calq
