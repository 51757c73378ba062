#pragma once
// Quantizable transposed 2-d convolution (decoder and segmentation upsampling heads).

#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

/// Same options as torch::nn::ConvTranspose2d (padding_mode must be zeros).
using ConvTranspose2dOptions = torch::nn::ConvTranspose2dOptions;

/// torch::nn::ConvTranspose2d with a weight slot and an output slot.
///
/// The weight has shape [in_channels, out_channels / groups, kH, kW]: its output channels lie
/// along axis 1 (per group). The weight fake-quant quantizes per OUTPUT channel, as for
/// Conv2d, whatever the groups: the weight is viewed as [out_channels, in_channels / groups,
/// kH, kW] (a per-group permutation), quantized along axis 0 with the qconfig's weight
/// recipe, and viewed back. So the recipe's ch_axis 0 means "output channel" for both
/// convolutions, and a weight observer keeps out_channels statistics.
class ConvTranspose2dImpl : public QuantModuleImpl {
 public:
  explicit ConvTranspose2dImpl(ConvTranspose2dOptions options);

  at::Tensor forward(const at::Tensor& x);
  /// The same with explicit symmetric padding and output padding (2 each), for callers that
  /// derive them from the input size (ONNX auto_pad / output_shape).
  at::Tensor forward_with(const at::Tensor& x, at::IntArrayRef padding,
                          at::IntArrayRef output_padding);

  bool has_weight() const override { return true; }

  /// The weight as the deployed operator uses it, after fake quantization (in its own
  /// layout [in, out / groups, kH, kW]).
  at::Tensor quantized_weight();

  torch::nn::ConvTranspose2d conv{nullptr};
};
TORCH_MODULE(ConvTranspose2d);

/// A transposed-convolution weight [in, out / groups, kH, kW] viewed per output channel:
/// [out, in / groups, kH, kW] (per group, the channel axes swapped), the layout its weight
/// quantizer sees.
at::Tensor conv_transpose_output_major(const at::Tensor& weight, int64_t groups);
/// The inverse: [out, in / groups, kH, kW] -> [in, out / groups, kH, kW].
at::Tensor conv_transpose_input_major(const at::Tensor& weight, int64_t groups,
                                      int64_t in_channels);

}  // namespace nn
}  // namespace calq
