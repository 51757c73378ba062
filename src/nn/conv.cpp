#include "calq/nn/conv.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "quant/small_tensor.h"

namespace calq {
namespace nn {
namespace detail {

ConvBlockImpl::ConvBlockImpl(std::string type_name, Conv2dOptions conv_options, bool with_bn,
                             Activation activation)
    : QuantModuleImpl(std::move(type_name)), activation_(activation) {
  TORCH_CHECK(c10::get_if<torch::ExpandingArray<2>>(&conv_options.padding()) != nullptr,
              this->type_name(), ": padding must be explicit numbers (kSame/kValid are not ",
              "supported by the quantized convolution)");
  TORCH_CHECK(c10::get_if<torch::enumtype::kZeros>(&conv_options.padding_mode()) != nullptr,
              this->type_name(), ": padding_mode must be zeros, as on the accelerator");
  const int64_t out_channels = conv_options.out_channels();
  conv = register_module("conv", torch::nn::Conv2d(std::move(conv_options)));
  if (with_bn) {
    bn = register_module("bn", torch::nn::BatchNorm2d(BatchNorm2dOptions(out_channels)));
  }
}

at::Tensor ConvBlockImpl::conv_with(const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& bias) const {
  const auto& o = conv->options;
  const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
  return at::conv2d(x, weight, bias, *o.stride(), *padding, *o.dilation(), o.groups());
}

at::Tensor ConvBlockImpl::activate(const at::Tensor& y) const {
  switch (activation_) {
    case Activation::none:
      return y;
    case Activation::relu:
      return at::relu(y);
    case Activation::relu6:
      return at::hardtanh(y, 0.0, 6.0);
  }
  TORCH_INTERNAL_ASSERT(false, "unknown activation");
}

void ConvBlockImpl::fuse() {
  if (has_bn()) fused_ = true;
}

void ConvBlockImpl::prepare(const QConfig& resolved) {
  TORCH_CHECK(!has_bn() || fused_, type_name(),
              " is not fused: call calq::fuse(model) before prepare_qat so that the weight is ",
              "quantized after batch-norm folding, as the accelerator runs it");
  QuantModuleImpl::prepare(resolved);
}

std::pair<at::Tensor, at::Tensor> ConvBlockImpl::folded_weight_and_bias() const {
  const at::Tensor& weight = conv->weight;
  at::Tensor bias =
      conv->bias.defined() ? conv->bias : at::zeros({weight.size(0)}, weight.options());
  if (!has_bn()) return {weight, bias};
  const at::Tensor inv_std = at::rsqrt(bn->running_var + bn->options.eps());
  const at::Tensor gamma = bn->weight.defined() ? bn->weight : at::ones_like(inv_std);
  const at::Tensor beta = bn->bias.defined() ? bn->bias : at::zeros_like(inv_std);
  const at::Tensor factor = gamma * inv_std;
  return {weight * factor.reshape({-1, 1, 1, 1}), beta + (bias - bn->running_mean) * factor};
}

at::Tensor ConvBlockImpl::forward_folded(const at::Tensor& x) {
  const bool batch_stats = is_training() && !bn_frozen_;
  if (!batch_stats) {
    // Exactly the deployed operator: one convolution with folded weight and bias.
    auto folded = folded_weight_and_bias();
    const at::Tensor weight =
        quantize_weight(folded.first, folded.second);  // VALIDATION: scale known now
    return conv_with(x, weight, deployed_bias(folded.second));
  }
  // Training: fake-quantize the weight folded with the running statistics, then undo the
  // per-channel factor on the small quantized weight (not on the large output: same value in
  // real arithmetic, since the factor is per output channel, at a fraction of the memory
  // traffic) so that batch norm normalizes with batch statistics, and updates the running
  // ones, as in float training.
  const at::Tensor inv_std = at::rsqrt(bn->running_var + bn->options.eps());
  const at::Tensor gamma = bn->weight.defined() ? bn->weight : at::ones_like(inv_std);
  const at::Tensor factor = (gamma * inv_std).reshape({-1, 1, 1, 1});
  // Times the reciprocal rather than divided by the factor: the same value to an ulp, and the
  // backward then reduces one product over the weight instead of dividing it twice more. A
  // channel whose factor is 0 or denormal (gamma 0: a pruned channel) gets weight 0 instead of
  // 0 / 0; batch norm then outputs its beta there, as in float.
  // (Checked on the raw values first: the guarded form costs a few more small ops per step, so
  // it is only built when needed; its reciprocal is of a safe factor so that no 0 * inf
  // reaches the gradient.)
  at::Tensor inverse;
  const bool all_normal = calq::detail::all_float_values(factor, [](float v) {
                            return std::isnormal(v);
                          }).value_or(false);
  if (all_normal) {
    inverse = factor.reciprocal();
  } else {
    const at::Tensor usable = factor.abs() >= std::numeric_limits<float>::min();
    inverse = at::where(usable, at::where(usable, factor, 1.0).reciprocal(), 0.0);
  }
  const at::Tensor weight = quantize_weight(conv->weight * factor, at::Tensor()) * inverse;
  at::Tensor y = conv_with(x, weight, at::Tensor());
  if (conv->bias.defined()) y = y + conv->bias.reshape({1, -1, 1, 1});
  const auto& o = bn->options;
  if (bn->num_batches_tracked.defined()) bn->num_batches_tracked.add_(1);  // as BatchNorm2d
  if (batch_norm_training_) return batch_norm_training_(y, *bn, o.momentum().value_or(0.1));
  return at::batch_norm(y, bn->weight, bn->bias, bn->running_mean, bn->running_var,
                        /*training=*/true, o.momentum().value_or(0.1), o.eps(),
                        /*cudnn_enabled=*/false);
}

at::Tensor ConvBlockImpl::forward(const at::Tensor& x) {
  // VALIDATION in integer arithmetic: the deployed QLinearConv, where the block computes its
  // deployed form (no batch norm, or folded with frozen statistics).
  const bool deployed_form = !has_bn() || (fused_ && !(is_training() && !bn_frozen_));
  if (integer_arithmetic() && deployed_form) {
    at::Tensor weight = conv->weight, bias = conv->bias;
    if (has_bn()) std::tie(weight, bias) = folded_weight_and_bias();
    const at::Tensor y = integer_weighted(
        x, weight, bias, activation_,
        [this](const at::Tensor& xi, const at::Tensor& wi) { return conv_with(xi, wi, {}); },
        /*float_output_in_integers=*/false);
    if (y.defined()) return traced({x}, y);
  }
  at::Tensor y;
  if (!has_bn()) {
    const at::Tensor weight = quantize_weight(conv->weight, conv->bias);
    y = conv_with(x, weight, deployed_bias(conv->bias));
  } else if (!fused_ && batch_norm_training_ && is_training()) {
    // BatchNorm2d's training forward with the installed statistics: the same
    // num_batches_tracked count and momentum rule (None: cumulative average).
    double momentum = bn->options.momentum().value_or(0.0);
    if (bn->num_batches_tracked.defined()) {
      bn->num_batches_tracked.add_(1);
      if (!bn->options.momentum()) momentum = 1.0 / bn->num_batches_tracked.item<double>();
    }
    y = batch_norm_training_(conv->forward(x), *bn, momentum);
  } else if (!fused_) {
    y = bn->forward(conv->forward(x));
  } else {
    y = forward_folded(x);
  }
  return traced({x}, quantize_output(activate(y)));
}

}  // namespace detail
}  // namespace nn
}  // namespace calq
