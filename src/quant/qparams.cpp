#include "calq/quant/qparams.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/small_tensor.h"

namespace calq {
namespace {

// The exponent k of the power of two 2^k that `scale` rounds to, before clamping. frexp splits
// scale = m * 2^e with m in [0.5, 1): scale is 2^(e-1) exactly when m == 0.5, so rounding up
// gives e - 1 then and e otherwise; rounding to nearest in the log domain compares m with
// 2^-0.5 (log2(m) + e rounds to e when log2(m) >= -0.5, i.e. m >= sqrt(1/2)).
int power_of_two_exponent(double scale, PowerOfTwoRounding rounding) {
  int exponent = 0;
  const double mantissa = std::frexp(scale, &exponent);
  if (rounding == PowerOfTwoRounding::up) {
    return mantissa == 0.5 ? exponent - 1 : exponent;
  }
  return mantissa >= std::sqrt(0.5) ? exponent : exponent - 1;
}

void check_positive_scale(double scale) {
  TORCH_CHECK(std::isfinite(scale) && scale > 0, "power-of-two scale: scale = ", scale,
              " is invalid; a scale must be finite and positive");
}

void check_scale_values(const at::Tensor& scale) {
  const at::Tensor values = scale.to(at::kDouble).contiguous();
  const double* data = values.data_ptr<double>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    TORCH_CHECK(std::isfinite(data[i]) && data[i] > 0, "scale[", i, "] = ", data[i],
                " is invalid; a scale must be finite and positive");
  }
}

}  // namespace

double power_of_two_scale(double scale, PowerOfTwoRounding rounding) {
  check_positive_scale(scale);
  const int exponent =
      std::min(std::max(power_of_two_exponent(scale, rounding), kPowerOfTwoMinExponent),
               kPowerOfTwoMaxExponent);
  return std::ldexp(1.0, exponent);
}

bool power_of_two_clamped(double scale, PowerOfTwoRounding rounding) {
  check_positive_scale(scale);
  const int exponent = power_of_two_exponent(scale, rounding);
  return exponent < kPowerOfTwoMinExponent || exponent > kPowerOfTwoMaxExponent;
}

std::pair<at::Tensor, at::Tensor> compute_qparams(const at::Tensor& min_val,
                                                  const at::Tensor& max_val,
                                                  const QuantSpec& spec) {
  spec.validate();
  TORCH_CHECK(min_val.defined() && max_val.defined(),
              "compute_qparams: min_val and max_val "
              "must be defined tensors");
  TORCH_CHECK(
      at::isFloatingType(min_val.scalar_type()) && at::isFloatingType(max_val.scalar_type()),
      "compute_qparams: min_val and max_val must be floating tensors, got ", min_val.scalar_type(),
      " and ", max_val.scalar_type());
  TORCH_CHECK(min_val.sizes() == max_val.sizes(), "compute_qparams: min_val shape ",
              min_val.sizes(), " differs from max_val shape ", max_val.sizes());
  TORCH_CHECK(min_val.numel() > 0,
              "compute_qparams: min_val and max_val are empty; need one "
              "value per tensor or per channel");

  const at::Tensor lo = detail::to_double_vector(min_val);
  const at::Tensor hi = detail::to_double_vector(max_val);
  const int64_t n = lo.numel();
  const double* lo_data = lo.data_ptr<double>();
  const double* hi_data = hi.data_ptr<double>();

  const double quant_min = static_cast<double>(spec.quant_min());
  const double quant_max = static_cast<double>(spec.quant_max());
  at::Tensor scale = at::empty({n}, at::kFloat);
  at::Tensor zero_point = at::zeros({n}, at::kInt);
  float* scale_data = scale.data_ptr<float>();
  int32_t* zero_point_data = zero_point.data_ptr<int32_t>();

  for (int64_t i = 0; i < n; ++i) {
    const double mn = lo_data[i];
    const double mx = hi_data[i];
    TORCH_CHECK(std::isfinite(mn) && std::isfinite(mx), "compute_qparams: range [", mn, ", ", mx,
                "] at index ", i, " is not finite; observed ranges must be finite");
    TORCH_CHECK(mn <= mx, "compute_qparams: min_val (", mn, ") > max_val (", mx, ") at index ", i,
                "; min_val must not exceed max_val");
    double s = 0.0;
    if (spec.unsigned_grid()) {
      // eq. 1c: [0, M] onto [0, quant_max] with zero point 0; negative values saturate to 0.
      s = std::max(mx, 0.0) / (quant_max - quant_min);
    } else if (spec.symmetric()) {
      // eq. 1: half the number of steps, (quant_max - quant_min) / 2 = 127.5 for qint8.
      s = std::max(std::abs(mn), std::abs(mx)) / ((quant_max - quant_min) / 2.0);
    } else {
      // eq. 4: the range must contain 0 so that real 0 is exactly representable.
      s = (std::max(mx, 0.0) - std::min(mn, 0.0)) / (quant_max - quant_min);
    }
    float scale_f = std::max(static_cast<float>(s), static_cast<float>(kMinScale));
    if (spec.power_of_two()) {
      scale_f = static_cast<float>(power_of_two_scale(scale_f));  // exact in float32
    }
    scale_data[i] = scale_f;
    if (!spec.symmetric()) {
      const double zp = quant_min - std::nearbyint(std::min(mn, 0.0) / scale_f);
      zero_point_data[i] = static_cast<int32_t>(std::min(std::max(zp, quant_min), quant_max));
    }
  }
  return {scale, zero_point};
}

at::Tensor QuantizedBias::dequantized() const {
  return values.to(at::kFloat) * scale;
}

QuantizedBias quantize_bias(const at::Tensor& bias, double input_scale,
                            const at::Tensor& weight_scale) {
  TORCH_CHECK(bias.defined() && at::isFloatingType(bias.scalar_type()) && bias.dim() == 1,
              "quantize_bias: bias must be a floating vector, got ",
              bias.defined() ? bias.sizes() : at::IntArrayRef{});
  TORCH_CHECK(std::isfinite(input_scale) && input_scale > 0, "quantize_bias: input scale ",
              input_scale, " must be finite and positive");
  const int64_t channels = bias.numel();
  const at::Tensor b = detail::to_double_vector(bias);
  const at::Tensor w = detail::to_double_vector(weight_scale);
  TORCH_CHECK(w.numel() == 1 || w.numel() == channels, "quantize_bias: ", w.numel(),
              " weight scales for ", channels, " bias values; need 1 or ", channels);
  QuantizedBias out;
  out.values = at::empty({channels}, at::kInt);
  out.scale = at::empty({channels}, at::kFloat);
  const float s_x = static_cast<float>(input_scale);
  for (int64_t c = 0; c < channels; ++c) {
    const float s_w = static_cast<float>(w.data_ptr<double>()[w.numel() == 1 ? 0 : c]);
    const float scale = s_x * s_w;  // float32 product: the bias DequantizeLinear's scale
    TORCH_CHECK(scale > 0 && std::isfinite(scale), "quantize_bias: s_x * s_w[", c, "] = ", scale,
                " is not a positive finite float32");
    const double ratio = b.data_ptr<double>()[c] / static_cast<double>(scale);
    TORCH_CHECK(std::isfinite(ratio), "quantize_bias: bias[", c, "] = ", b.data_ptr<double>()[c],
                " is not finite");
    out.max_ratio = std::max(out.max_ratio, std::abs(ratio));
    double q = std::nearbyint(ratio);
    constexpr double kMax = 2147483647.0, kMin = -2147483648.0;
    if (q > kMax || q < kMin) {
      ++out.saturated;
      q = std::min(std::max(q, kMin), kMax);
    }
    out.values.data_ptr<int32_t>()[c] = static_cast<int32_t>(q);
    out.scale.data_ptr<float>()[c] = scale;
  }
  return out;
}

at::Tensor bias_fitting_weight_scale(const at::Tensor& bias, double input_scale,
                                     const at::Tensor& weight_scale, bool power_of_two,
                                     int64_t* widened) {
  TORCH_CHECK(bias.defined() && at::isFloatingType(bias.scalar_type()) && bias.dim() == 1,
              "bias_fitting_weight_scale: bias must be a floating vector");
  TORCH_CHECK(std::isfinite(input_scale) && input_scale > 0,
              "bias_fitting_weight_scale: ", "input scale ", input_scale,
              " must be finite and positive");
  // Called on every VALIDATION forward of a weighted layer: when every channel already fits
  // (8-bit grids, always), answer from the raw float32 values without allocating.
  const double limit = 2147483647.0 / 1.0001;
  const float s_x = static_cast<float>(input_scale);
  if (bias.scalar_type() == at::kFloat && weight_scale.scalar_type() == at::kFloat &&
      bias.device().is_cpu() && weight_scale.device().is_cpu() && bias.is_contiguous() &&
      weight_scale.is_contiguous() &&
      (weight_scale.numel() == 1 || weight_scale.numel() == bias.numel())) {
    const float* bp = bias.data_ptr<float>();
    const float* sp = weight_scale.data_ptr<float>();
    const bool one = weight_scale.numel() == 1;
    bool all_fit = true;
    for (int64_t c = 0; c < bias.numel() && all_fit; ++c) {
      const float w = sp[one ? 0 : c];
      const float product = s_x * w;
      all_fit = std::isfinite(bp[c]) && std::isfinite(w) && w > 0 && product > 0 &&
                std::abs(static_cast<double>(bp[c])) / static_cast<double>(product) <= limit;
    }
    if (all_fit) {
      if (widened != nullptr) *widened = 0;
      return weight_scale;
    }
  }
  const at::Tensor b = detail::to_double_vector(bias);
  at::Tensor out = weight_scale.detach().to(at::kCPU, at::kFloat).contiguous().clone();
  const int64_t channels = b.numel(), scales = out.numel();
  TORCH_CHECK(scales == 1 || scales == channels, "bias_fitting_weight_scale: ", scales,
              " weight scales for ", channels, " bias values; need 1 or ", channels);
  float* s = out.data_ptr<float>();
  const double* bv = b.data_ptr<double>();
  // `limit`: below 2^31 - 1 with ORT's relative margin, so that round(b / fr(s_x * s_w)) fits
  // whatever the float32 rounding of the product.
  int64_t raised = 0;
  for (int64_t i = 0; i < scales; ++i) {
    double need = std::abs(bv[scales == 1 ? 0 : i]);  // the largest |b_c| this scale serves
    for (int64_t c = 1; scales == 1 && c < channels; ++c) need = std::max(need, std::abs(bv[c]));
    TORCH_CHECK(std::isfinite(need), "bias_fitting_weight_scale: the bias is not finite");
    TORCH_CHECK(std::isfinite(s[i]) && s[i] > 0, "bias_fitting_weight_scale: weight scale[", i,
                "] = ", s[i], " must be finite and positive");
    if (need == 0.0) continue;  // a zero bias fits any scale
    auto fits = [&](float w) {
      const float product = s_x * w;
      return product > 0 && need / static_cast<double>(product) <= limit;
    };
    if (fits(s[i])) continue;
    float w = static_cast<float>(need / (static_cast<double>(s_x) * limit));
    if (power_of_two) {
      w = static_cast<float>(std::exp2(std::ceil(std::log2(static_cast<double>(w)))));
    }
    // Up to the first that fits, then down while the next smaller one still does: the
    // smallest, whatever the float32 rounding of the start and of s_x * w.
    const float step = power_of_two ? 2.0f : 0.0f;
    auto up = [&](float v) {
      return step > 0 ? v * step : std::nextafter(v, std::numeric_limits<float>::infinity());
    };
    auto down = [&](float v) { return step > 0 ? v / step : std::nextafter(v, 0.0f); };
    w = std::max(w, std::numeric_limits<float>::min());  // a normal start: doubling moves it
    while (std::isfinite(w) && !fits(w)) w = up(w);
    TORCH_CHECK(std::isfinite(w), "bias_fitting_weight_scale: bias ", need, " needs a weight ",
                "scale beyond float32 at input scale ", input_scale);
    while (down(w) > s[i] && fits(down(w))) w = down(w);
    s[i] = w;
    ++raised;
  }
  if (widened != nullptr) *widened = raised;
  return out.reshape(weight_scale.sizes());
}

at::Tensor round_scale_to_power_of_two(const at::Tensor& scale) {
  TORCH_CHECK(scale.defined() && at::isFloatingType(scale.scalar_type()),
              "round_scale_to_power_of_two: scale must be a floating tensor");
  check_scale_values(scale);
  // Every float32 value is exact in float64, and so is its power of two.
  at::Tensor values = scale.detach().to(at::kCPU, at::kDouble).contiguous().clone();
  double* data = values.data_ptr<double>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    data[i] = power_of_two_scale(data[i]);
  }
  // Clamped to [2^-14, 2^-1]: representable in every floating dtype.
  return values.to(scale.scalar_type());
}

}  // namespace calq
