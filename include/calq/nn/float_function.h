#pragma once
// Operations without a calq::nn module of their own, as modules: float functions the
// accelerator computes outside its integer kernels (Softmax, HardSwish, GELU, bilinear
// resize, ...; deployed as DQ -> float op -> Q), and value-moving operations (Reshape,
// Transpose, Slice, ...) that pass their input's quantization through. Imported ONNX graphs
// use them for every operator that is not a layer with weights or an arithmetic module.

#include <torch/nn/pimpl.h>

#include <functional>
#include <string>
#include <vector>

#include "calq/nn/quant_module.h"

namespace calq {
namespace nn {

/// A function of tensors with an output slot.
///
/// The function receives the inputs and whether the module is in training mode (for
/// Dropout-like behaviour) and returns the outputs. When the module is a quantization point,
/// prepare() gives it an output fake-quant that is applied to every floating-point output;
/// otherwise outputs are returned as computed (a pass-through or a float side computation).
///
/// `type_name` is the key for per-type qconfig overrides ("Softmax", "HardSwish", ...): it
/// must be one of calq's known type names to be used in QConfigOverrides::by_type.
/// The function is not part of the saved state: a model with FloatFunction children is
/// rebuilt by the code that made it (e.g. by importing the same ONNX file) before loading.
class FloatFunctionImpl : public QuantModuleImpl {
 public:
  using Function =
      std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& inputs, bool training)>;

  FloatFunctionImpl(std::string type_name, Function function, bool quantization_point);

  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& inputs);
  bool is_quantization_point() const override { return quantization_point_; }

 private:
  Function function_;
  bool quantization_point_;
};
TORCH_MODULE(FloatFunction);

/// The type names of the FloatFunction modules calq's ONNX importer creates ("Softmax",
/// "HardSwish", "GELU", "SiLU", "Resize", "Reshape", ...). prepare_qat accepts them as
/// QConfigOverrides::by_type keys.
const std::vector<std::string>& float_function_type_names();

}  // namespace nn
}  // namespace calq
