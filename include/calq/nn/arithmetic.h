#pragma once
// Functional operations as modules (each output a quantization point): Add, AddReLU, Mul, Cat.
// In C++ a model calls these modules where Python would call `a + b`, so that the sum gets
// its own quantization slot, as on the accelerator.

#include <torch/nn/pimpl.h>

#include <vector>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

/// a + b (broadcasting as at::add).
class AddImpl : public QuantModuleImpl {
 public:
  AddImpl() : QuantModuleImpl("Add") {}
  at::Tensor forward(const at::Tensor& a, const at::Tensor& b);
};
TORCH_MODULE(Add);

/// max(a + b, 0): the residual add of a ResNet block fused with the ReLU after it, one
/// quantization point (the sum is not quantized before the ReLU), as integer accelerators
/// execute it and as PyTorch's FloatFunctional.add_relu. Float output equals relu(a + b).
class AddReLUImpl : public QuantModuleImpl {
 public:
  AddReLUImpl() : QuantModuleImpl("AddReLU") {}
  at::Tensor forward(const at::Tensor& a, const at::Tensor& b);
  bool output_non_negative() const override { return true; }
};
TORCH_MODULE(AddReLU);

/// a * b (broadcasting as at::mul).
class MulImpl : public QuantModuleImpl {
 public:
  MulImpl() : QuantModuleImpl("Mul") {}
  at::Tensor forward(const at::Tensor& a, const at::Tensor& b);
};
TORCH_MODULE(Mul);

/// at::cat(tensors, dim). dim: default 1 (channels).
class CatImpl : public QuantModuleImpl {
 public:
  explicit CatImpl(int64_t dim = 1) : QuantModuleImpl("Cat"), dim(dim) {}
  at::Tensor forward(const std::vector<at::Tensor>& tensors);
  int64_t dim;
};
TORCH_MODULE(Cat);

}  // namespace nn
}  // namespace calq
