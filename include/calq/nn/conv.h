#pragma once
// Quantizable 2-d convolutions: Conv2d, ConvReLU2d, ConvReLU6_2d and the fused Conv-BN blocks
// ConvBn2d, ConvBnReLU2d, ConvBnReLU6_2d.

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <functional>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

/// Same options as torch::nn::Conv2d (padding_mode must be zeros; padding must be explicit).
using Conv2dOptions = torch::nn::Conv2dOptions;
using BatchNorm2dOptions = torch::nn::BatchNorm2dOptions;

namespace detail {

/// conv [-> bn] [-> activation] with one weight slot and one output slot.
///
/// Without BN it computes conv(x, fq(weight)) + bias.
/// With BN, before fuse() it computes bn(conv(x)) exactly like torch::nn::Conv2d followed by
/// torch::nn::BatchNorm2d. After fuse() (required before prepare) it uses the BN-folded weight
/// w_fold = weight * gamma / sqrt(running_var + eps), fake-quantized per output channel
/// (Jacob et al. 2018, as PyTorch's QAT ConvBn2d):
///   training (BN not frozen): y = bn_batch_stats(conv(x, fq(w_fold)) / (gamma / std) + bias)
///     which uses and updates batch statistics as in float training;
///   eval, or frozen BN: y = conv(x, fq(w_fold)) + b_fold,
///     b_fold = beta + (bias - running_mean) * gamma / std: what the deployed folded
///     convolution computes.
class ConvBlockImpl : public QuantModuleImpl {
 public:
  ConvBlockImpl(std::string type_name, Conv2dOptions conv_options, bool with_bn,
                Activation activation);

  at::Tensor forward(const at::Tensor& x);

  bool has_weight() const override { return true; }
  void prepare(const QConfig& resolved) override;

  /// Switches a Conv-BN block to its folded form (no-op without BN). Idempotent.
  void fuse();
  bool fused() const { return fused_; }
  bool has_bn() const { return !bn.is_empty(); }
  /// The activation that closes the block.
  Activation activation() const { return activation_; }
  /// Replaces the closing activation (cross-layer equalization turns ReLU6 into ReLU, which
  /// commutes with a positive per-channel scale). The type name stays. Changes the float
  /// function of the block; say so wherever it is used.
  void set_activation(Activation activation) { activation_ = activation; }
  bool output_non_negative() const override { return activation_ != Activation::none; }
  /// In the folded form, use running statistics in training too and stop updating them
  /// (the usual last epochs of QAT). Default false.
  void freeze_bn(bool frozen = true) { bn_frozen_ = frozen; }
  bool bn_frozen() const { return bn_frozen_; }

  /// The weight and bias the deployed (folded) convolution uses, before fake quantization.
  std::pair<at::Tensor, at::Tensor> folded_weight_and_bias() const;

  /// Batch norm with batch statistics (training, BN not frozen), folded or not: returns
  /// bn(input) normalized with the statistics of the batch and updates bn's running
  /// statistics with `momentum` (the exponential-average factor, already resolved from the
  /// options), as at::batch_norm does in training. calq::distributed installs one whose
  /// statistics span the global batch of every process of a data-parallel job (synchronized
  /// batch norm). Empty (the default): this process's batch, through at::batch_norm. Not saved.
  using BatchNormTraining = std::function<at::Tensor(
      const at::Tensor& input, torch::nn::BatchNorm2dImpl& bn, double momentum)>;
  void set_batch_norm_training(BatchNormTraining batch_norm) {
    batch_norm_training_ = std::move(batch_norm);
  }

  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};

 private:
  at::Tensor conv_with(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) const;
  at::Tensor activate(const at::Tensor& y) const;
  at::Tensor forward_folded(const at::Tensor& x);

  Activation activation_;
  bool fused_ = false;
  bool bn_frozen_ = false;
  BatchNormTraining batch_norm_training_;
};

}  // namespace detail

#define CALQ_CONV_BLOCK(Name, with_bn, activation)                                         \
  class Name##Impl : public detail::ConvBlockImpl {                                        \
   public:                                                                                 \
    explicit Name##Impl(Conv2dOptions options)                                             \
        : ConvBlockImpl(#Name, std::move(options), with_bn, activation) {}                 \
    Name##Impl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel) \
        : Name##Impl(Conv2dOptions(in_channels, out_channels, kernel)) {}                  \
  };                                                                                       \
  TORCH_MODULE(Name)

/// torch::nn::Conv2d with a weight slot and an output slot.
CALQ_CONV_BLOCK(Conv2d, false, Activation::none);
/// Conv2d -> ReLU as one quantization point.
CALQ_CONV_BLOCK(ConvReLU2d, false, Activation::relu);
/// Conv2d -> ReLU6 as one quantization point (MobileNet blocks with batch norm folded into
/// the convolution, as eval-mode ONNX exports give them).
CALQ_CONV_BLOCK(ConvReLU6_2d, false, Activation::relu6);
/// Conv2d -> BatchNorm2d (bias usually false).
CALQ_CONV_BLOCK(ConvBn2d, true, Activation::none);
/// Conv2d -> BatchNorm2d -> ReLU.
CALQ_CONV_BLOCK(ConvBnReLU2d, true, Activation::relu);
/// Conv2d -> BatchNorm2d -> ReLU6 (MobileNet blocks).
CALQ_CONV_BLOCK(ConvBnReLU6_2d, true, Activation::relu6);

#undef CALQ_CONV_BLOCK

}  // namespace nn
}  // namespace calq
