#include "calq/nn/conv_transpose.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace calq {
namespace nn {

// [in, out/g, kH, kW] <-> [out, in/g, kH, kW]: per group, swap the channel axes.
at::Tensor conv_transpose_output_major(const at::Tensor& w, int64_t groups) {
  const int64_t in = w.size(0), out_per_group = w.size(1);
  return w.reshape({groups, in / groups, out_per_group, w.size(2), w.size(3)})
      .transpose(1, 2)
      .reshape({groups * out_per_group, in / groups, w.size(2), w.size(3)});
}

at::Tensor conv_transpose_input_major(const at::Tensor& w, int64_t groups, int64_t in) {
  const int64_t out = w.size(0), in_per_group = w.size(1);
  return w.reshape({groups, out / groups, in_per_group, w.size(2), w.size(3)})
      .transpose(1, 2)
      .reshape({in, out / groups, w.size(2), w.size(3)});
}

ConvTranspose2dImpl::ConvTranspose2dImpl(ConvTranspose2dOptions options)
    : QuantModuleImpl("ConvTranspose2d") {
  TORCH_CHECK(c10::get_if<torch::enumtype::kZeros>(&options.padding_mode()) != nullptr,
              "ConvTranspose2d: padding_mode must be zeros");
  conv = register_module("conv", torch::nn::ConvTranspose2d(std::move(options)));
}

at::Tensor ConvTranspose2dImpl::quantized_weight() {
  if (weight_fake_quant().is_empty()) return conv->weight;
  const int64_t groups = conv->options.groups();
  return conv_transpose_input_major(
      quantize_weight(conv_transpose_output_major(conv->weight, groups), conv->bias), groups,
      conv->weight.size(0));
}

at::Tensor ConvTranspose2dImpl::forward_with(const at::Tensor& x, at::IntArrayRef padding,
                                             at::IntArrayRef output_padding) {
  const auto& o = conv->options;
  return traced({x}, quantize_output(at::conv_transpose2d(
                         x, quantized_weight(), deployed_bias(conv->bias), *o.stride(), padding,
                         output_padding, o.groups(), *o.dilation())));
}

at::Tensor ConvTranspose2dImpl::forward(const at::Tensor& x) {
  const auto& o = conv->options;
  const auto* padding = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
  TORCH_CHECK(padding != nullptr, "ConvTranspose2d: padding must be explicit numbers");
  return forward_with(x, **padding, *o.output_padding());
}

}  // namespace nn
}  // namespace calq
