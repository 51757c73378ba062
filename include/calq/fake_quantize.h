#pragma once
// FakeQuantize: observer + fake-quant method + state, one per quantization point
// (docs/quantization.md, sections 3 and 5).

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "calq/observers/observer.h"
#include "calq/quant/quant_spec.h"

namespace calq {

/// The three states of the seed (semantics section 5).
///   QAT:         fake quantization on, observer updates.
///   CALIBRATION: output = input (float), observer updates.
///   VALIDATION:  fake quantization on with frozen scale, observer does not update.
enum class FakeQuantState { QAT, CALIBRATION, VALIDATION };
FakeQuantState fake_quant_state_from_string(const std::string& name);
std::string to_string(FakeQuantState state);

/// The three fake-quant methods (semantics section 3).
enum class FakeQuantMethod { fake_quant, lsq, pact };
FakeQuantMethod fake_quant_method_from_string(const std::string& name);
std::string to_string(FakeQuantMethod method);

/// Buffers/parameters (names are the contract of load_observer_params):
///   "scale" (float {1} or {C}; a Parameter for lsq), "zero_point" (int32, same shape),
///   "alpha" (pact only, Parameter {1}), "initialized" (uint8 {1}), and the observer's
///   state under "observer.".
class FakeQuantizeImpl : public torch::nn::Module {
 public:
  FakeQuantizeImpl(FakeQuantMethod method, observers::Observer observer,
                   nlohmann::json method_kwargs = nlohmann::json::object());

  /// Applies the current state's behaviour. x: floating tensor.
  at::Tensor forward(const at::Tensor& x);

  void set_state(FakeQuantState state);
  FakeQuantState state() const { return state_; }
  FakeQuantMethod method() const { return method_; }
  const QuantSpec& spec() const;
  observers::ObserverImpl& observer() { return *observer_; }
  const observers::ObserverImpl& observer() const { return *observer_; }

  /// Current scale / zero point as the forward would use them (computing them from the
  /// observer when they are stale). Throws if no data and no loaded scale.
  at::Tensor scale();
  at::Tensor zero_point();

  void pretty_print(std::ostream& stream) const override;

 private:
  FakeQuantMethod method_;
  observers::Observer observer_;
  FakeQuantState state_ = FakeQuantState::QAT;
  // method-specific members defined by the implementation
  at::Tensor scale_, zero_point_, alpha_, initialized_;
  bool qparams_stale_ = true;
  double lsq_grad_factor_ = -1.0;
};

TORCH_MODULE(FakeQuantize);

}  // namespace calq
