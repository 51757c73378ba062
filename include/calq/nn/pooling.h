#pragma once
// Pooling. Average pools create new values, so their outputs are quantization points; max
// pooling selects existing values and passes their quantization through.

#include <torch/nn/modules/pooling.h>
#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

using MaxPool2dOptions = torch::nn::MaxPool2dOptions;
using AvgPool2dOptions = torch::nn::AvgPool2dOptions;
using AdaptiveAvgPool2dOptions = torch::nn::AdaptiveAvgPool2dOptions;

/// As torch::nn::MaxPool2d; not a quantization point.
class MaxPool2dImpl : public QuantModuleImpl {
 public:
  explicit MaxPool2dImpl(MaxPool2dOptions options);
  at::Tensor forward(const at::Tensor& x) { return traced({x}, pool->forward(x)); }
  bool is_quantization_point() const override { return false; }
  torch::nn::MaxPool2d pool{nullptr};
};
TORCH_MODULE(MaxPool2d);

/// As torch::nn::AvgPool2d; output is a quantization point.
class AvgPool2dImpl : public QuantModuleImpl {
 public:
  explicit AvgPool2dImpl(AvgPool2dOptions options);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::AvgPool2d pool{nullptr};
};
TORCH_MODULE(AvgPool2d);

/// As torch::nn::AdaptiveAvgPool2d; output is a quantization point.
class AdaptiveAvgPool2dImpl : public QuantModuleImpl {
 public:
  explicit AdaptiveAvgPool2dImpl(AdaptiveAvgPool2dOptions options);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::AdaptiveAvgPool2d pool{nullptr};
};
TORCH_MODULE(AdaptiveAvgPool2d);

}  // namespace nn
}  // namespace calq
