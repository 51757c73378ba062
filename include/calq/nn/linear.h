#pragma once
// Quantizable fully connected layers: Linear and the fused LinearReLU.

#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

using LinearOptions = torch::nn::LinearOptions;

namespace detail {

/// linear(x, fq(weight), bias) [-> relu] with a weight slot and an output slot.
class LinearBlockImpl : public QuantModuleImpl {
 public:
  LinearBlockImpl(std::string type_name, LinearOptions options, bool relu);
  at::Tensor forward(const at::Tensor& x);
  bool has_weight() const override { return true; }
  /// Whether a ReLU closes the block (LinearReLU).
  bool relu() const { return relu_; }

  torch::nn::Linear linear{nullptr};

 private:
  bool relu_;
};

}  // namespace detail

/// torch::nn::Linear with a weight slot and an output slot.
class LinearImpl : public detail::LinearBlockImpl {
 public:
  explicit LinearImpl(LinearOptions options)
      : LinearBlockImpl("Linear", std::move(options), /*relu=*/false) {}
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(LinearOptions(in_features, out_features)) {}
};
TORCH_MODULE(Linear);

/// Linear -> ReLU as one quantization point.
class LinearReLUImpl : public detail::LinearBlockImpl {
 public:
  explicit LinearReLUImpl(LinearOptions options)
      : LinearBlockImpl("LinearReLU", std::move(options), /*relu=*/true) {}
  LinearReLUImpl(int64_t in_features, int64_t out_features)
      : LinearReLUImpl(LinearOptions(in_features, out_features)) {}
};
TORCH_MODULE(LinearReLU);

}  // namespace nn
}  // namespace calq
