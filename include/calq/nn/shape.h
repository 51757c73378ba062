#pragma once
// Shape-only modules: they move values without changing them, so they are not quantization
// points and keep their input's quantization.

#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

using FlattenOptions = torch::nn::FlattenOptions;

/// As torch::nn::Flatten (default start_dim 1, end_dim -1).
class FlattenImpl : public QuantModuleImpl {
 public:
  explicit FlattenImpl(FlattenOptions options = {});
  at::Tensor forward(const at::Tensor& x) { return traced({x}, flatten->forward(x)); }
  bool is_quantization_point() const override { return false; }
  torch::nn::Flatten flatten{nullptr};
};
TORCH_MODULE(Flatten);

/// Returns its input.
class IdentityImpl : public QuantModuleImpl {
 public:
  IdentityImpl() : QuantModuleImpl("Identity") {}
  at::Tensor forward(const at::Tensor& x) { return traced({x}, x); }
  bool is_quantization_point() const override { return false; }
};
TORCH_MODULE(Identity);

}  // namespace nn
}  // namespace calq
