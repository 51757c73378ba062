#pragma once
// Layer normalization (ConvNeXt, ViT): computed in float on integer accelerators; its output
// is a quantization point.

#include <torch/arg.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

struct LayerNormOptions {
  /* implicit */ LayerNormOptions(std::vector<int64_t> normalized_shape)
      : normalized_shape_(std::move(normalized_shape)) {}
  /// The trailing dimensions normalized over (their sizes). Must not be empty.
  TORCH_ARG(std::vector<int64_t>, normalized_shape);
  /// Added to the variance. Default 1e-5.
  TORCH_ARG(double, eps) = 1e-5;
  /// Learnable scale (ones) and shift (zeros) of normalized_shape. Default true.
  TORCH_ARG(bool, elementwise_affine) = true;
  /// With elementwise_affine: whether the shift exists. Default true.
  TORCH_ARG(bool, bias) = true;
};

/// at::layer_norm(x, normalized_shape, weight, bias, eps), as torch::nn::LayerNorm. The
/// scale and shift are float parameters (not quantized: the accelerator runs the
/// normalization in float); the output is a quantization point.
class LayerNormImpl : public QuantModuleImpl {
 public:
  explicit LayerNormImpl(LayerNormOptions options);
  at::Tensor forward(const at::Tensor& x);

  LayerNormOptions options;
  /// Undefined without elementwise_affine (and bias without options.bias).
  at::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

}  // namespace nn
}  // namespace calq
