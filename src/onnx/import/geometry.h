#pragma once
// Padding of convolutions and pools as ONNX defines it: explicit pads (begin..., end...) or
// auto_pad (SAME_UPPER, SAME_LOWER, VALID), resolved against the input's spatial size at run
// time (dynamic shapes), and transposed-convolution output geometry.

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "calq/onnx/model.h"

namespace calq {
namespace onnx {
namespace detail {

/// Window geometry of a Conv / ConvTranspose / MaxPool / AveragePool node.
struct Window {
  int64_t spatial = 0;  ///< number of spatial dims (1, 2 or 3)
  std::vector<int64_t> kernel, strides, dilations;
  std::string auto_pad = "NOTSET";
  std::vector<int64_t> pads;  ///< 2 * spatial: begins then ends (NOTSET only)
  bool ceil_mode = false;

  /// Reads the attributes; `kernel` from kernel_shape or `weight_kernel` (weights' dims).
  static Window read(const Node& node, int64_t spatial, const std::vector<int64_t>& weight_kernel);
  /// (begin, end) padding per spatial dim for an input of spatial size `in` (forward windows:
  /// Conv, pools).
  std::vector<std::pair<int64_t, int64_t>> resolve(at::IntArrayRef in) const;
  /// True when the explicit pads are the same at both ends (no auto_pad).
  bool symmetric() const;
};

/// Pads `x`'s trailing spatial dims by (begin, end) each with `value` (negative crops).
at::Tensor pad_spatial(const at::Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& pads,
                       double value);

/// ConvTranspose geometry: output_padding and output_shape attributes beside Window.
struct TransposedWindow {
  Window window;
  std::vector<int64_t> output_padding;  ///< per spatial dim
  std::vector<int64_t> output_shape;    ///< empty unless given
  static TransposedWindow read(const Node& node, int64_t spatial,
                               const std::vector<int64_t>& weight_kernel);
  /// (begin, end) padding per spatial dim for input spatial size `in` (negative: the output
  /// extends past the full transposed convolution).
  std::vector<std::pair<int64_t, int64_t>> resolve(at::IntArrayRef in) const;
};

}  // namespace detail
}  // namespace onnx
}  // namespace calq
