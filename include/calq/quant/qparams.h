#pragma once
// Scale and zero point from a range (docs/quantization.md, equations 1 and 4).

#include <ATen/core/Tensor.h>

#include <utility>

#include "calq/quant/quant_spec.h"

namespace calq {

/// Smallest scale ever produced: float32 epsilon, so an all-zero range gives a finite,
/// non-zero scale (never 0, inf or NaN).
constexpr double kMinScale = 1.1920928955078125e-07;

/// Power-of-two scales (spec.power_of_two(), the "bernoulli" march) are kept within
/// [2^kPowerOfTwoMinExponent, 2^kPowerOfTwoMaxExponent] = [2^-14, 2^-1], as the plugin's
/// observers do (they clamp the shift to 1..14). A scale clamped at 2^-1 saturates int8 at
/// 63.5; a scale clamped at 2^-14 quantizes values below 2^-15 to 0. Every clamp is reported
/// (power_of_two_clamped, FakeQuantize::scale_clamped, calq::clamped_scales).
constexpr int kPowerOfTwoMinExponent = -14;
constexpr int kPowerOfTwoMaxExponent = -1;

/// How a positive scale becomes a power of two.
enum class PowerOfTwoRounding {
  up,       ///< 2^ceil(log2(s)): observers and fixed scales (never clips more than asked).
  nearest,  ///< 2^round(log2(s)), ties up: learned values (lsq, pact), so that a learned value
            ///< that starts on the grid stays there until it has moved half an octave.
};

/// `scale` (finite, > 0) as a power of two, clamped to [2^-14, 2^-1]. Exact (frexp/ldexp).
double power_of_two_scale(double scale, PowerOfTwoRounding rounding = PowerOfTwoRounding::up);
/// Whether power_of_two_scale(scale, rounding) had to clamp.
bool power_of_two_clamped(double scale, PowerOfTwoRounding rounding = PowerOfTwoRounding::up);

/// Scale and zero point for the range [min_val, max_val].
///
/// Symmetric (default, eq. 1): scale = max(|min|, |max|) / ((quant_max - quant_min) / 2),
/// zero_point = 0; for qint8 the divisor is 127.5. Affine (eq. 4):
/// scale = (max - min) / (quant_max - quant_min), zero_point = quant_min - round(min / scale),
/// with the range first widened to contain 0. Unsigned (spec.unsigned_grid(), eq. 1c):
/// scale = max(max, 0) / (quant_max - quant_min), zero_point = 0 (quant_min is 0). All are
/// floored at kMinScale; with
/// spec.power_of_two() the scale is then rounded up to the next power of two and clamped to
/// [2^-14, 2^-1] (power_of_two_scale); the affine zero point is computed with that scale.
///
/// min_val / max_val: same shape; one element (per-tensor) or one per channel. Any floating
/// dtype. Non-finite bounds are an error naming the offending value.
/// Returns scale (float32) and zero_point (int32), both shaped {numel(min_val)}.
std::pair<at::Tensor, at::Tensor> compute_qparams(const at::Tensor& min_val,
                                                  const at::Tensor& max_val, const QuantSpec& spec);

/// A bias as the deployed integer convolution / matrix product adds it to its int32
/// accumulator (docs/deploy.md): scale_c = s_x * s_w[c] rounded to float32 (the bias
/// DequantizeLinear's scale), bias_q = round_half_even(b_c / scale_c) saturated to int32.
struct QuantizedBias {
  at::Tensor values;       ///< int32 {C}
  at::Tensor scale;        ///< float32 {C}
  int64_t saturated = 0;   ///< how many values were saturated to int32
  double max_ratio = 0.0;  ///< max |b_c / scale_c| (saturation above 2^31 - 1)
  /// values * scale as float32: the real bias the deployed model adds.
  at::Tensor dequantized() const;
};
/// bias: floating {C}; input_scale > 0 finite; weight_scale: floating {1} (per tensor) or {C}.
QuantizedBias quantize_bias(const at::Tensor& bias, double input_scale,
                            const at::Tensor& weight_scale);

/// The weight scale a deployment uses with `bias` at input scale s_x: where the int32 bias
/// round(b_c / (s_x * s_w[c])) would overflow (16-bit grids: s_x * s_w can be ~1e-9), s_w[c] is
/// raised to the smallest float32 (power_of_two: power of two) for which it fits, with a margin
/// of 1e-4 as ONNX Runtime's quantize_static (_adjust_weight_scale_for_int32_bias) and
/// TFLite's quantizer do; other channels keep their scale. A saturated bias would instead
/// move the channel's whole output (docs/deploy.md). weight_scale: floating {1} (the one scale
/// is raised for the largest channel) or {C}; bias: floating {C}. Returns float32, shaped like
/// weight_scale; `widened` (optional) receives how many scales were raised.
at::Tensor bias_fitting_weight_scale(const at::Tensor& bias, double input_scale,
                                     const at::Tensor& weight_scale, bool power_of_two,
                                     int64_t* widened = nullptr);

/// Rounds each scale up to 2^ceil(log2(scale)) and clamps it to [2^-14, 2^-1]
/// (power_of_two_scale); scales must be positive and finite.
at::Tensor round_scale_to_power_of_two(const at::Tensor& scale);

}  // namespace calq
