#pragma once
// QuantSpec: how a tensor is quantized (docs/quantization.md, equations 1-4).

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>

namespace calq {

/// Integer formats of the accelerator. Ranges (eq. 1): qint4 [-8, 7], qint8 [-128, 127],
/// qint16 [-32768, 32767].
enum class QuantDtype { qint4, qint8, qint16 };

/// How `real / scale` is rounded to an integer (eq. 2).
enum class Rounding {
  half_to_even,  ///< IEEE round-half-to-even (default, as PyTorch's fake-quant).
  half_up,       ///< floor(v + 0.5), the accelerator's own rounding.
};

/// "qint8" -> QuantDtype::qint8; an unknown name throws and lists the valid ones.
QuantDtype quant_dtype_from_string(const std::string& name);
std::string to_string(QuantDtype dtype);
Rounding rounding_from_string(const std::string& name);
std::string to_string(Rounding rounding);
/// Default quant_min / quant_max of a dtype: signed [-2^(b-1), 2^(b-1) - 1], or with
/// `unsigned_grid` [0, 2^b - 1].
int64_t default_quant_min(QuantDtype dtype, bool unsigned_grid = false);
int64_t default_quant_max(QuantDtype dtype, bool unsigned_grid = false);

/// Everything that defines a quantization grid except the scale itself.
///
///   calq::QuantSpec(calq::QuantDtype::qint8).per_channel(true).ch_axis(0)
struct QuantSpec {
  /* implicit */ QuantSpec(QuantDtype dtype = QuantDtype::qint8) : dtype_(dtype) {}

  /// Integer format; sets the default quant range. Default qint8.
  TORCH_ARG(QuantDtype, dtype);
  /// One scale per slice along `ch_axis` instead of one per tensor. Default false.
  TORCH_ARG(bool, per_channel) = false;
  /// Channel axis for per-channel quantization; negative counts from the end. Default 0.
  TORCH_ARG(int64_t, ch_axis) = 0;
  /// Rounding of real / scale. Default half_to_even.
  TORCH_ARG(Rounding, rounding) = Rounding::half_to_even;
  /// Round every scale up to a power of two (the "bernoulli" march). Default false.
  TORCH_ARG(bool, power_of_two) = false;
  /// Symmetric (zero_point 0, the default and the accelerator's scheme) or affine
  /// (zero_point chosen so that [min, max] maps onto [quant_min, quant_max]).
  TORCH_ARG(bool, symmetric) = true;
  /// Unsigned grid [0, 2^b - 1] with zero point 0 (eq. 1c), for tensors known to be
  /// non-negative (after ReLU / ReLU6): at 4 bits it keeps 16 levels for [0, t] where the
  /// signed grid keeps 8. The default quant range becomes quint4 [0, 15], quint8 [0, 255],
  /// quint16 [0, 65535]; a quant_range override must start at 0. Requires symmetric (zero
  /// point 0; general affine grids are a separate scheme). Negative values saturate to 0.
  /// Targets: ONNX Runtime (uint8 / uint16 Q-DQ; 4 bits as uint8 with a Clip, or UINT4 at
  /// opset 21); not the accelerator, whose grids are signed. Default false.
  TORCH_ARG(bool, unsigned_grid) = false;

 public:
  /// Overrides the dtype's quant range; both ends must lie inside the dtype's range and
  /// quant_min < quant_max (checked by validate()).
  QuantSpec& quant_range(int64_t quant_min, int64_t quant_max);
  /// Drops a quant range override.
  QuantSpec& default_quant_range();
  int64_t quant_min() const;
  int64_t quant_max() const;
  /// Throws c10::Error naming the offending field if the spec is inconsistent.
  void validate() const;
  /// Human-readable, e.g. "qint8[-128,127] per_channel(axis=0) symmetric half_to_even";
  /// unsigned grids name the dtype "quint4" / "quint8" / "quint16".
  std::string str() const;

  bool operator==(const QuantSpec& other) const;
  bool operator!=(const QuantSpec& other) const { return !(*this == other); }

 private:
  c10::optional<int64_t> quant_min_override_;
  c10::optional<int64_t> quant_max_override_;
};

}  // namespace calq
