#pragma once
// The quantization points of a prepared model and how to switch them one at a time
// (docs/analysis.md, section 2). A point is a calq::nn module with a weight quantizer, an
// output quantizer or both; "quantized" means its quantizers in VALIDATION, "float" means them
// in FLOAT (pass-through, the calibration kept).

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "calq/fake_quantize.h"
#include "calq/nn/quant_module.h"

namespace calq {
namespace analysis {

/// A model input batch -> the model's output (one tensor). For zoo classifiers
/// `[&](const at::Tensor& x) { return model->forward(x); }`, for graphs `graph->forward(x)`.
using Forward = std::function<at::Tensor(const at::Tensor&)>;

/// One quantization point.
struct QuantPoint {
  std::string name;  ///< module path as in named_modules()
  std::string type;  ///< calq::nn type name ("ConvBnReLU2d", "Add", "QuantStub", ...)
  nn::QuantModuleImpl* module = nullptr;  ///< owned by the model
  /// The point's quantizers, owned by the model (null if the weight is not quantized / the
  /// output stays float). Plain shared pointers, not module holders: a const point still
  /// switches its quantizers' state (a holder's const access is const).
  std::shared_ptr<FakeQuantizeImpl> weight;
  std::shared_ptr<FakeQuantizeImpl> output;

  bool has_weight() const { return weight != nullptr; }
  bool has_output() const { return output != nullptr; }
  /// Sets the point's quantizers (those it has) to `state`.
  void set_state(FakeQuantState state) const;
};

/// Every quantization point of a prepared model, in execution order when `forward` and an
/// example batch are given (one forward, recorded with calq::nn's call recorder; points that
/// did not run are dropped), else in registration order. Throws if the model is not prepared
/// or has no quantizer.
std::vector<QuantPoint> quantization_points(torch::nn::Module& model);
std::vector<QuantPoint> quantization_points(torch::nn::Module& model, const Forward& forward,
                                            const at::Tensor& example);

/// Puts the model in eval mode and every quantizer in `state` (set_fake_quantize).
void set_all(torch::nn::Module& model, FakeQuantState state);

/// Records, during one forward, the inputs and output of every call of the given modules in call
/// order (a module called twice gives two entries). Used to compare a point's output between a
/// float and a quantized forward of the same batch.
class OutputRecorder {
 public:
  /// `modules`: the modules whose outputs to keep (others are ignored).
  explicit OutputRecorder(const std::vector<const nn::QuantModuleImpl*>& modules);
  ~OutputRecorder();
  OutputRecorder(const OutputRecorder&) = delete;
  OutputRecorder& operator=(const OutputRecorder&) = delete;

  /// Runs forward(x) while recording (no gradients); returns the model output. Clears the
  /// previous recording first.
  at::Tensor run(const Forward& forward, const at::Tensor& x);
  /// The recorded calls: module, its inputs and its output (detached), in call order.
  struct Call {
    const nn::QuantModuleImpl* module;
    std::vector<at::Tensor> inputs;
    at::Tensor output;
  };
  const std::vector<Call>& calls() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace analysis
}  // namespace calq
