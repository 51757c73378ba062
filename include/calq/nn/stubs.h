#pragma once
// QuantStub / DeQuantStub: where a model's input enters and its output leaves the quantized
// domain.

#include <c10/util/Optional.h>
#include <torch/nn/pimpl.h>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

struct QuantStubOptions {
  /// A fixed input scale (e.g. 1/127.5 for data already in [-1, 1]): when set, prepare uses
  /// the fixed_scale observer with this scale, whatever the qconfig's observer. Must be
  /// finite and > 0. Default: unset (the qconfig's activation observer decides).
  TORCH_ARG(c10::optional<double>, fixed_scale) = c10::nullopt;
};

/// Identity in float; after prepare, fake-quantizes the model input (a quantization point).
class QuantStubImpl : public QuantModuleImpl {
 public:
  explicit QuantStubImpl(QuantStubOptions options = {});
  at::Tensor forward(const at::Tensor& x) { return traced({x}, quantize_output(x)); }
  void prepare(const QConfig& resolved) override;

  QuantStubOptions options;
};
TORCH_MODULE(QuantStub);

/// Identity, before and after prepare: marks where the output leaves the quantized domain.
class DeQuantStubImpl : public QuantModuleImpl {
 public:
  DeQuantStubImpl() : QuantModuleImpl("DeQuantStub") {}
  at::Tensor forward(const at::Tensor& x) { return traced({x}, x); }
  bool is_quantization_point() const override { return false; }
};
TORCH_MODULE(DeQuantStub);

}  // namespace nn
}  // namespace calq
