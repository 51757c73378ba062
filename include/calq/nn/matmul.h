#pragma once
// MatMul of two activations (attention scores q k^T, attention-weighted values): both
// operands are quantized activations, the product is a quantization point.

#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

/// at::matmul(a, b) (numpy matmul semantics, broadcasting batch dimensions). No weight: a
/// product with a constant matrix is a Linear. The operands must come quantized (outputs of
/// quantization points or of pass-through modules after one), as on the accelerator.
class MatMulImpl : public QuantModuleImpl {
 public:
  MatMulImpl() : QuantModuleImpl("MatMul") {}
  at::Tensor forward(const at::Tensor& a, const at::Tensor& b);
};
TORCH_MODULE(MatMul);

}  // namespace nn
}  // namespace calq
