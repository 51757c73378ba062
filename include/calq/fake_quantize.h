#pragma once
// FakeQuantize: observer + fake-quant method + state, one per quantization point
// (semantics sections 3 and 5; docs/observers.md).

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <nlohmann/json.hpp>

#include <ostream>
#include <string>
#include <vector>

#include "calq/observers/observer.h"
#include "calq/quant/quant_spec.h"

namespace calq {

/// The three states of the seed (semantics section 5).
///   QAT:         observer updates (on x.detach()), fake quantization on.
///   CALIBRATION: observer updates, output = input (float, the same tensor).
///   VALIDATION:  observer frozen, fake quantization on with the current scale.
enum class FakeQuantState { QAT, CALIBRATION, VALIDATION };
/// "qat" / "calibration" / "validation" (also upper case); unknown names throw listing them.
FakeQuantState fake_quant_state_from_string(const std::string& name);
std::string to_string(FakeQuantState state);

/// The three fake-quant methods (semantics section 3).
enum class FakeQuantMethod { fake_quant, lsq, pact };
/// "fake_quant" / "lsq" / "pact"; unknown names throw listing them.
FakeQuantMethod fake_quant_method_from_string(const std::string& name);
std::string to_string(FakeQuantMethod method);
/// Keyword arguments a method accepts: fake_quant none; lsq "grad_factor";
/// pact "alpha", "init_alpha_from_observer".
std::vector<std::string> fake_quant_method_keys(FakeQuantMethod method);

/// State (names are the contract of load_observer_params; all defined from construction on):
///   "scale": float32 {1} or {C}, empty {0} until first computed. For lsq a Parameter (the
///       learned step), otherwise a buffer (fake_quant: the observer's scale; pact:
///       alpha / ((quant_max - quant_min) / 2), kept for export).
///   "zero_point": int32, same shape as scale.
///   "alpha": pact only, Parameter float32 {1}.
///   "initialized": uint8 {1}; 1 once scale (lsq) or alpha (pact) or the cached scale
///       (fake_quant) holds a value. lsq/pact never re-initialize an initialized value, so a
///       loaded or calibrated value is kept.
///   "observer.*": the observer's buffers.
///
/// Method behaviour when quantizing (QAT and VALIDATION):
///   fake_quant: scale/zero_point = observer.qparams(), recomputed lazily only when the
///       observer saw batches since the last computation (so kl's update_interval holds: its
///       range changes only every update_interval batches). Without observer data, a loaded
///       scale is used; with neither, forward throws.
///   lsq: on first use, if not initialized, scale = observer.qparams() (the observer has the
///       current batch in QAT); then lsq_fake_quantize with the learned scale.
///   pact: on first use, if not initialized and init_alpha_from_observer (default true) and
///       the observer already had data before this forward (calibration or loaded state),
///       alpha = max(|min_val|, |max_val|) of the observer's range; otherwise alpha keeps its
///       value (kwarg "alpha", default 6). Per-tensor only.
/// Behaviour never depends on Module::is_training(); only set_state() changes it.
class FakeQuantizeImpl : public torch::nn::Module {
 public:
  /// method_kwargs: see fake_quant_method_keys (unknown keys throw listing the valid ones).
  FakeQuantizeImpl(FakeQuantMethod method, observers::Observer observer,
                   nlohmann::json method_kwargs = nlohmann::json::object());

  /// Applies the current state's behaviour. x: floating tensor, any shape (per-channel:
  /// dim > ch_axis). Returns x itself in CALIBRATION.
  at::Tensor forward(const at::Tensor& x);

  /// Default state: QAT.
  void set_state(FakeQuantState state) { state_ = state; }
  FakeQuantState state() const { return state_; }
  FakeQuantMethod method() const { return method_; }
  const QuantSpec& spec() const;
  observers::ObserverImpl& observer() { return *observer_; }
  const observers::ObserverImpl& observer() const { return *observer_; }
  bool initialized() const;

  /// Current scale / zero point as the forward would use them (computing or initializing
  /// them from the observer when needed). Throws if no data and no loaded value.
  at::Tensor scale();
  at::Tensor zero_point();

  void pretty_print(std::ostream& stream) const override;

 private:
  /// Brings scale/zero_point (and alpha for pact) up to date for quantizing.
  void prepare_qparams(bool observer_had_data);

  FakeQuantMethod method_;
  observers::Observer observer_;
  FakeQuantState state_ = FakeQuantState::QAT;
  at::Tensor scale_, zero_point_, alpha_, initialized_;
  // Observer batch count the cached fake_quant scale was computed at; -1: never (also after
  // a load, so a loaded observer state is honoured).
  int64_t computed_at_batches_ = -1;
  double lsq_grad_factor_ = -1.0;
  bool init_alpha_from_observer_ = true;
};

TORCH_MODULE(FakeQuantize);

}  // namespace calq
