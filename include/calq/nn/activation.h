#pragma once
// Quantizable activations: each output is a quantization point.

#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

/// max(x, 0), as torch::nn::ReLU.
class ReLUImpl : public QuantModuleImpl {
 public:
  ReLUImpl() : QuantModuleImpl("ReLU") {}
  at::Tensor forward(const at::Tensor& x);
  bool output_non_negative() const override { return true; }
};
TORCH_MODULE(ReLU);

/// min(max(x, 0), 6), as torch::nn::ReLU6.
class ReLU6Impl : public QuantModuleImpl {
 public:
  ReLU6Impl() : QuantModuleImpl("ReLU6") {}
  at::Tensor forward(const at::Tensor& x);
  bool output_non_negative() const override { return true; }
};
TORCH_MODULE(ReLU6);

}  // namespace nn
}  // namespace calq
