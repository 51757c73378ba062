#pragma once
// Base of every calq::nn module: a float module with quantization slots that prepare_qat
// fills (docs/design.md, "A LibTorch fact that shapes layer 5").

#include <c10/util/Optional.h>
#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "calq/fake_quantize.h"
#include "calq/qconfig.h"

namespace calq {
namespace nn {

class QuantModuleImpl;

/// Receives every calq::nn module call while calq::trace runs (one recorder per thread).
class CallRecorder {
 public:
  virtual ~CallRecorder() = default;
  virtual void record(const QuantModuleImpl& module, const std::vector<at::Tensor>& inputs,
                      const at::Tensor& output) = 0;
};

/// Makes `recorder` this thread's recorder until the scope ends (scopes nest).
class RecordingScope {
 public:
  explicit RecordingScope(CallRecorder* recorder);
  ~RecordingScope();
  RecordingScope(const RecordingScope&) = delete;
  RecordingScope& operator=(const RecordingScope&) = delete;

 private:
  CallRecorder* previous_;
};

/// A quantizable module. Until prepared it computes exactly what its torch::nn counterpart
/// computes. prepare() registers up to two FakeQuantize children:
///   "weight_fake_quant" (modules with a weight, when the qconfig has a weight recipe) and
///   "output_fake_quant" (quantization points, when the qconfig has an activation recipe),
/// so they appear in named_modules() and in saved state.
class QuantModuleImpl : public torch::nn::Module {
 public:
  explicit QuantModuleImpl(std::string type_name);

  /// The key used for per-type qconfig overrides, e.g. "Conv2d", "ConvBnReLU2d", "Add".
  const std::string& type_name() const { return type_name_; }

  /// The module's own qconfig: highest priority in prepare_qat (global < type < name < own).
  /// Default: unset. Changing it after prepare has no effect.
  c10::optional<QConfig> qconfig;

  /// Whether this module owns a weight that a weight recipe quantizes.
  virtual bool has_weight() const { return false; }
  /// Whether this module's output is a quantization point.
  virtual bool is_quantization_point() const { return true; }

  /// Registers the fake-quant children for `resolved` (the qconfig after overrides). Throws
  /// if already prepared. Subclasses may check more (fused blocks must be fused first).
  virtual void prepare(const QConfig& resolved);
  bool prepared() const { return prepared_; }
  /// The resolved qconfig given to prepare() (unset before).
  const c10::optional<QConfig>& resolved_qconfig() const { return resolved_qconfig_; }

  /// Empty holders (is_empty()) where the slot is not filled.
  FakeQuantize weight_fake_quant() const { return weight_fake_quant_; }
  FakeQuantize output_fake_quant() const { return output_fake_quant_; }

  /// The quantizer whose grid this module's input lies on (an upstream module's output
  /// quantizer, found by calq::link_input_quantizers from a trace); empty if unknown or the
  /// input is float. Not a child: not saved, set again after a load. Weighted modules use it in
  /// VALIDATION to add their bias as the deployed integer kernel does (int32 at s_x * s_w).
  void set_input_quantizer(FakeQuantize quantizer) { input_quantizer_ = std::move(quantizer); }
  FakeQuantize input_quantizer() const { return input_quantizer_; }

 protected:
  /// The bias as the deployed model adds it: in VALIDATION, with a quantized weight and a known
  /// input quantizer, quantize_bias(bias, s_x, s_w).dequantized(); otherwise `bias` itself.
  at::Tensor deployed_bias(const at::Tensor& bias) const;
  /// Identity while the slot is empty.
  at::Tensor quantize_weight(const at::Tensor& weight);
  at::Tensor quantize_output(const at::Tensor& output);
  /// Reports the call (inputs -> output) to this thread's recorder, if a trace runs, and
  /// returns output. Every forward ends with it, so that traces see the dataflow between
  /// modules.
  at::Tensor traced(const std::vector<at::Tensor>& inputs, const at::Tensor& output) const;

 private:
  std::string type_name_;
  bool prepared_ = false;
  c10::optional<QConfig> resolved_qconfig_;
  FakeQuantize weight_fake_quant_{nullptr};
  FakeQuantize output_fake_quant_{nullptr};
  FakeQuantize input_quantizer_{nullptr};
};

}  // namespace nn
}  // namespace calq
