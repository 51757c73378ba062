#pragma once
// Reductions that create new values: their outputs are quantization points.

#include <torch/arg.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

struct ReduceMeanOptions {
  /* implicit */ ReduceMeanOptions(std::vector<int64_t> dims) : dims_(std::move(dims)) {}
  /// Dimensions to average over (negative counts from the end). Must not be empty.
  TORCH_ARG(std::vector<int64_t>, dims);
  /// Keep the reduced dimensions with size 1. Default true (as ONNX ReduceMean).
  TORCH_ARG(bool, keepdim) = true;
};

/// x.mean(dims, keepdim): global pooling written as a reduction (SE blocks, ViT heads) and
/// the mean of layer norms written out. Output is a quantization point.
class ReduceMeanImpl : public QuantModuleImpl {
 public:
  explicit ReduceMeanImpl(ReduceMeanOptions options);
  at::Tensor forward(const at::Tensor& x);
  ReduceMeanOptions options;
};
TORCH_MODULE(ReduceMean);

}  // namespace nn
}  // namespace calq
