#pragma once
// Base of every calq::nn module: a float module with quantization slots that prepare_qat
// fills (docs/design.md, "A LibTorch fact that shapes layer 5").

#include <c10/util/Optional.h>
#include <torch/nn/module.h>

#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "calq/fake_quantize.h"
#include "calq/qconfig.h"
#include "calq/quant/integer_arithmetic.h"

namespace calq {
namespace nn {

class QuantModuleImpl;

/// Activation that closes a fused block.
enum class Activation { none, relu, relu6 };

/// A weighted module's weight and bias as the deployed integer kernel holds them.
struct IntegerWeights {
  at::Tensor values;         ///< float64 integers, the weight zero point removed; weight's shape
  std::vector<float> scale;  ///< weight scale per output channel
  at::Tensor bias;           ///< float64 integers {C}: int32 at s_x * s_w[c] (quantize_bias)
};

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
  /// Whether every output value is >= 0 whatever the input (a closing ReLU or ReLU6): only
  /// such outputs may take an unsigned activation grid (QuantSpec::unsigned_grid; prepare
  /// checks it). Default false.
  virtual bool output_non_negative() const { return false; }

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
  void set_input_quantizer(FakeQuantize quantizer) { input_quantizers_ = {std::move(quantizer)}; }
  FakeQuantize input_quantizer() const {
    return input_quantizers_.empty() ? FakeQuantize(nullptr) : input_quantizers_[0];
  }
  /// The quantizers of every input in argument order (empty holders for float inputs), as
  /// link_input_quantizers finds them. Integer arithmetic needs the grid of each operand.
  void set_input_quantizers(std::vector<FakeQuantize> quantizers) {
    input_quantizers_ = std::move(quantizers);
  }
  const std::vector<FakeQuantize>& input_quantizers() const { return input_quantizers_; }

  /// VALIDATION in the deployed runtime's integer arithmetic instead of the float simulation
  /// (calq::set_integer_arithmetic sets it on a whole model; unset by default). A module then
  /// computes exactly what the runtime's integer kernel computes (calq/quant/
  /// integer_arithmetic.h: exact integer accumulation, the runtime's requantization), provided
  /// its quantizers are in VALIDATION, its linked inputs lie on their grids and their widths
  /// run in integers there; otherwise it computes the float simulation, which is what the
  /// runtime runs for such an op (DequantizeLinear -> float op -> QuantizeLinear).
  void set_integer_arithmetic(c10::optional<IntegerArithmetic> arithmetic) {
    integer_arithmetic_ = std::move(arithmetic);
  }
  const c10::optional<IntegerArithmetic>& integer_arithmetic() const { return integer_arithmetic_; }
  /// How many forwards of this module ran in integer arithmetic (diagnostics: a module whose
  /// inputs are not linked or not on their grids keeps the float simulation silently).
  int64_t integer_calls() const { return integer_calls_; }

  /// `weight` (after batch-norm folding, before quantization) and `bias` as the deployed kernel
  /// holds them for an input on a grid of scale `input_scale`. Needs a weight quantizer.
  IntegerWeights integer_weights(const at::Tensor& weight, const at::Tensor& bias,
                                 float input_scale) const;
  /// The weight quantizer's scale as deployed with `bias` (undefined: none) for an input of
  /// scale `input_scale`: raised per channel where the int32 bias would overflow
  /// (calq::bias_fitting_weight_scale), the quantizer's own scale elsewhere. Needs a weight
  /// quantizer.
  at::Tensor deployed_weight_scale(const at::Tensor& bias, double input_scale) const;
  /// `weight` as deployed with `bias` for an input of scale `input_scale`: the weight
  /// quantizer's forward, at deployed_weight_scale where that differs. Needs a weight
  /// quantizer.
  at::Tensor deployed_weight(const at::Tensor& weight, const at::Tensor& bias, double input_scale);
  /// `weight` (with `bias`, after batch-norm folding) as this module's forward quantizes it in
  /// the current state (quantize_weight).
  at::Tensor simulated_weight(const at::Tensor& weight, const at::Tensor& bias) {
    return quantize_weight(weight, bias);
  }

 protected:
  /// A value as the runtime stores it: integers on a grid.
  struct IntegerValue {
    at::Tensor q;  ///< stored integers (float32 holding integer values)
    StoredGrid grid;
  };
  /// Input `index` (the tensor `x`) as stored integers, when this call runs in integer
  /// arithmetic: integer arithmetic set, the input's linked quantizer in VALIDATION, per
  /// tensor, of an integer width, and `x` exactly on its grid. nullopt otherwise.
  c10::optional<IntegerValue> integer_input(size_t index, const at::Tensor& x) const;
  /// The output quantizer's stored grid under the same conditions; nullopt otherwise.
  c10::optional<StoredGrid> integer_output_grid() const;
  /// A weighted layer in integer arithmetic: `accumulate(x_int, w_int)` computes the exact
  /// integer products summed (output channel on axis 1) from float tensors holding integers;
  /// then bias, requantization (or the float output of a layer without output quantizer) and
  /// the closing activation. Undefined when the call does not run in integer arithmetic (see
  /// integer_input); the caller then computes the float simulation.
  using Accumulate = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& w)>;
  /// `float_output_in_integers`: whether the runtime has an integer kernel with a float output
  /// for this op (QGemm: Linear) for a layer without output quantizer.
  at::Tensor integer_weighted(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              Activation activation, const Accumulate& accumulate,
                              bool float_output_in_integers) const;
  /// A two-operand kernel (QLinearAdd, QLinearMul, QLinearMatMul: calq::integer::add, ...) on
  /// both inputs' integers, then the closing activation, dequantized; undefined when the call
  /// does not run in integer arithmetic.
  using IntegerBinary = at::Tensor (*)(const at::Tensor&, const StoredGrid&, const at::Tensor&,
                                       const StoredGrid&, const StoredGrid&);
  at::Tensor integer_binary(const at::Tensor& a, const at::Tensor& b, IntegerBinary op,
                            Activation activation = Activation::none) const;
  /// A one-operand kernel (the average pools) on the input's integers, dequantized; undefined
  /// when the call does not run in integer arithmetic.
  using IntegerUnary =
      std::function<at::Tensor(const at::Tensor& q, const StoredGrid& x, const StoredGrid& out)>;
  at::Tensor integer_unary(const at::Tensor& x, const IntegerUnary& op) const;

  /// The bias as the deployed model adds it: in VALIDATION, with a quantized weight and a known
  /// input quantizer, quantize_bias(bias, s_x, s_w).dequantized(); otherwise `bias` itself.
  at::Tensor deployed_bias(const at::Tensor& bias) const;
  /// Identity while the slot is empty. `bias`: the bias this weight is deployed with
  /// (undefined: none); where deployed_bias quantizes it, the weight is deployed_weight.
  at::Tensor quantize_weight(const at::Tensor& weight, const at::Tensor& bias);
  at::Tensor quantize_output(const at::Tensor& output);
  /// Reports the call (inputs -> output) to this thread's recorder, if a trace runs, and
  /// returns output. Every forward ends with it, so that traces see the dataflow between
  /// modules.
  at::Tensor traced(const std::vector<at::Tensor>& inputs, const at::Tensor& output) const;

 private:
  /// s_x when deployed_bias quantizes `bias` (VALIDATION, a weight quantizer, a per-tensor
  /// input quantizer); nullopt otherwise.
  c10::optional<double> bias_input_scale(const at::Tensor& bias) const;

  std::string type_name_;
  bool prepared_ = false;
  c10::optional<QConfig> resolved_qconfig_;
  FakeQuantize weight_fake_quant_{nullptr};
  FakeQuantize output_fake_quant_{nullptr};
  /// Whether `fq`'s values are integers of a kernel the runtime runs in integers.
  bool on_integer_grid(const FakeQuantizeImpl& fq) const;
  /// Whether this call may run in integer arithmetic at all (set; eval mode; no trace; no
  /// autograd through `tensors`).
  bool integer_call(std::initializer_list<const at::Tensor*> tensors) const;

  std::vector<FakeQuantize> input_quantizers_;
  c10::optional<IntegerArithmetic> integer_arithmetic_;
  mutable int64_t integer_calls_ = 0;
};

}  // namespace nn
}  // namespace calq
