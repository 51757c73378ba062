#pragma once
// FakeQuantize: observer + fake-quant method + state, one per quantization point
// (semantics sections 3 and 5; docs/observers.md).

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "calq/observers/observer.h"
#include "calq/quant/integer_arithmetic.h"
#include "calq/quant/quant_spec.h"

namespace calq {

/// The three states of the seed (semantics section 5).
///   QAT:         observer updates (on x.detach()), fake quantization on.
///   CALIBRATION: observer updates, output = input (float, the same tensor).
///   VALIDATION:  observer frozen, fake quantization on with the current scale.
///   FLOAT:       observer frozen, output = input: this point computes in float while the
///                calibration it holds is kept (per-layer analysis quantizes one point at a
///                time, or all but one, without changing any scale). Not in the seed.
enum class FakeQuantState { QAT, CALIBRATION, VALIDATION, FLOAT };
/// "qat" / "calibration" / "validation" / "float" (also upper case); unknown names throw
/// listing them.
FakeQuantState fake_quant_state_from_string(const std::string& name);
std::string to_string(FakeQuantState state);

/// While alive, every FakeQuantize of this thread returns its input unchanged and observes
/// nothing, whatever its state (scopes nest). calq::trace runs its example through a model
/// this way: a trace records structure, and its example (often zeros) must not become part of
/// a calibration nor initialize lsq / pact parameters.
class PassThroughScope {
 public:
  PassThroughScope();
  ~PassThroughScope();
  PassThroughScope(const PassThroughScope&) = delete;
  PassThroughScope& operator=(const PassThroughScope&) = delete;
  /// Whether a scope is active on this thread.
  static bool active();

 private:
  bool previous_;
};

/// The three fake-quant methods (semantics section 3).
enum class FakeQuantMethod { fake_quant, lsq, pact };
/// "fake_quant" / "lsq" / "pact"; unknown names throw listing them.
FakeQuantMethod fake_quant_method_from_string(const std::string& name);
std::string to_string(FakeQuantMethod method);
/// Keyword arguments a method accepts: fake_quant none; lsq "grad_factor";
/// pact "alpha", "init_alpha_from_observer".
std::vector<std::string> fake_quant_method_keys(FakeQuantMethod method);

/// Options of the fake-quant methods (each method reads its own; the others are ignored).
struct FakeQuantizeOptions {
  /// lsq: factor of the scale gradient; <= 0 selects the paper's 1 / sqrt(n * quant_max).
  /// Default -1. Must be finite.
  TORCH_ARG(double, lsq_grad_factor) = -1.0;
  /// pact: the clip alpha before any calibration. Default 6 (ReLU6). Finite, > 0.
  TORCH_ARG(double, pact_alpha) = 6.0;
  /// pact: on the first quantizing forward, take alpha from the observer's range when the
  /// observer already had data (CALIBRATION batches fed to this very quantizer). A loaded
  /// calibration always sets alpha (load_calibration). Default true.
  TORCH_ARG(bool, init_alpha_from_observer) = true;
};

/// The options of `method` from qconfig keyword arguments (qconfig.h): lsq "grad_factor";
/// pact "alpha", "init_alpha_from_observer". Unknown keys throw listing the valid ones;
/// invalid values throw naming the parameter.
FakeQuantizeOptions fake_quantize_options(FakeQuantMethod method,
                                          const nlohmann::json& method_kwargs);

/// What FakeQuantizeImpl::load_calibration did with one source quantizer.
struct CalibrationLoad {
  enum class Outcome {
    copied,     ///< same grid: the source's scale taken exactly (observer state copied or carried)
    converted,  ///< another grid (dtype, range, symmetry, power of two): the source's range
                ///< carried over and the scale derived for this grid
    mismatched  ///< incompatible (per-channel vs per-tensor, channel axis or count, no data)
  };
  Outcome outcome = Outcome::copied;
  /// Why, for converted / mismatched, e.g. "qint8 -> qint16: scale derived from the range".
  std::string detail;
  /// State entries (relative names, e.g. "observer.histogram") set from the source.
  std::vector<std::string> copied_entries;
  /// Source observer entries that do not apply to this observer's kind (histogram, first_min,
  /// ...) and were not used: expected when calibration and QAT use different observers.
  std::vector<std::string> not_applicable;
};

/// One quantization point: observer + fake-quant method + state.
///
/// State (names are part of the saved format):
///   "scale": float32 {1} or {C}, empty {0} until first computed. For lsq on a free grid a
///       Parameter (the learned step); otherwise a buffer holding the scale of the last
///       quantizing forward (fake_quant: the observer's scale; pact: pact_scale(alpha); lsq on
///       a power-of-two grid: 2^round(log2_scale)). Read scales with qparams(), which is
///       always current.
///   "log2_scale": lsq on a power-of-two grid only (spec.power_of_two()), Parameter, float32:
///       the learned base-2 logarithm of the scale (learned_power_of_two_scale, eq. 6b).
///   "zero_point": int32, same shape as scale.
///   "alpha": pact only, Parameter float32 {1}.
///   "initialized": uint8 {1}; 1 once the method's own value holds a value (fake_quant: the
///       cached scale; lsq: the learned scale; pact: alpha). Its meaning depends on the method,
///       so load_calibration sets it for this method instead of copying it.
///   "observer.*": the observer's buffers.
///
/// Method behaviour when quantizing (QAT and VALIDATION):
///   fake_quant: scale/zero_point = observer.qparams(), recomputed lazily only when the
///       observer saw batches since the last computation (so kl's update_interval holds: its
///       range changes only every update_interval batches). Without observer data, a loaded
///       scale is used; with neither, forward throws.
///   lsq: on first use, if not initialized, scale = observer.qparams() (the observer has the
///       current batch in QAT); then lsq_fake_quantize with the learned scale. On a
///       power-of-two grid the logarithm is learned instead (log2_scale).
///   pact: on first use, if not initialized and init_alpha_from_observer and the observer
///       already had data before this forward, alpha = max(|min_val|, |max_val|) of the
///       observer's range; otherwise alpha keeps its value (option pact_alpha). Per-tensor
///       symmetric only.
/// Behaviour never depends on Module::is_training(); only set_state() changes it.
class FakeQuantizeImpl : public torch::nn::Module {
 public:
  FakeQuantizeImpl(FakeQuantMethod method, observers::Observer observer,
                   FakeQuantizeOptions options = {});

  /// Applies the current state's behaviour. x: floating tensor, any shape (per-channel:
  /// dim > ch_axis). Returns x itself in CALIBRATION and FLOAT.
  at::Tensor forward(const at::Tensor& x);

  /// Default state: QAT.
  void set_state(FakeQuantState state) { state_ = state; }
  FakeQuantState state() const { return state_; }
  FakeQuantMethod method() const { return method_; }
  const FakeQuantizeOptions& options() const { return options_; }
  const QuantSpec& spec() const;
  observers::ObserverImpl& observer() { return *observer_; }
  const observers::ObserverImpl& observer() const { return *observer_; }
  bool initialized() const;

  /// Scale (float32) and zero point (int32) the next quantizing forward would use if the
  /// observer saw no new batch, as fresh tensors; nothing in the module changes (a read is a
  /// read). Throws if there is neither observer data nor a loaded or learned value.
  std::pair<at::Tensor, at::Tensor> qparams() const;
  at::Tensor scale() const { return qparams().first; }
  at::Tensor zero_point() const { return qparams().second; }
  /// The real range the quantizer represents: [(quant_min - zp) * s, (quant_max - zp) * s]
  /// per scale (float64 {C} each). The calibrated "threshold" of a symmetric grid is its max.
  std::pair<at::Tensor, at::Tensor> represented_range() const;
  /// The integer levels (zero point included; float64 holding integers) this quantizer gives
  /// `weight` in VALIDATION: what the export stores as the weight initializer and what the
  /// deployed integer kernel multiplies. Per-channel scales lie along spec().ch_axis().
  /// `scale` (optional): a scale of the same shape to use instead of this quantizer's (the
  /// bias-fitting weight scale, calq::bias_fitting_weight_scale); the zero point is kept.
  at::Tensor integer_levels(const at::Tensor& weight, const at::Tensor& scale = {}) const;
  /// `weight` fake-quantized at `scale` instead of this quantizer's scale (zero point kept),
  /// as VALIDATION computes it; no observer step, no tap.
  at::Tensor fake_quantize_at(const at::Tensor& weight, const at::Tensor& scale) const;
  /// This per-tensor quantizer's grid as a runtime stores it (calq::stored_grid: signed 8-bit
  /// grids shifted to uint8 when `uint8_activations`). Throws for a per-channel spec.
  StoredGrid stored_grid(bool uint8_activations) const;
  /// Whether a power-of-two scale in use was clamped to [2^-14, 2^-1] (always false on a free
  /// grid): the observer's range, the fixed scale, the learned log2_scale or pact's alpha asked
  /// for a power of two outside it.
  bool scale_clamped() const;

  /// Starts this quantizer from another one's calibration (load_observer_params, step 8 of the
  /// seed). The source is only read. Per-channel layout, axis and channel count must agree,
  /// else nothing changes (mismatched). On the same grid (dtype range, symmetry, power of two,
  /// per-channel; rounding may differ) the source's scale is taken exactly; on another grid
  /// the source's represented range is carried and the scale derived for this grid
  /// (compute_qparams). The observer copies the source observer's state when both are of the
  /// same kind and configuration and the source observer defines the source's scale; otherwise
  /// it adopts the range (ObserverImpl::adopt_range) and the source's kind-specific entries
  /// are listed as not applicable. Then, by this quantizer's method: fake_quant caches the
  /// scale; lsq sets its learned scale (or log2_scale); pact sets alpha to the calibrated
  /// threshold (on a power-of-two grid the threshold of the power-of-two scale). The result is
  /// initialized for this method.
  CalibrationLoad load_calibration(const FakeQuantizeImpl& source);

  /// Projects the learned parameters back into their valid set, in place: an lsq scale that
  /// an optimizer step took to <= 0 becomes |scale| (floored at kMinScale), a pact alpha
  /// likewise, a log2_scale is kept within half an octave of [2^-14, 2^-1]. The forward does
  /// this too; call it (or calq::project_quantizer_parameters) right after optimizer.step()
  /// so that the stored values are valid at every point, e.g. when a checkpoint is written.
  void project_parameters();

  /// Called after every forward with the quantizer's input and output (in CALIBRATION the
  /// output is the input): lets tools see every quantization point of a model (per-layer
  /// error analysis, tests). Empty (the default) to remove. Not saved.
  using Tap = std::function<void(const at::Tensor& input, const at::Tensor& output)>;
  void set_tap(Tap tap) { tap_ = std::move(tap); }

  /// What the observer is fed in states QAT and CALIBRATION: observer_input(x) (x detached)
  /// instead of x. A data-parallel job (calq::distributed) substitutes the statistics of the
  /// whole global batch, so that every process's observer takes the same step as one process
  /// seeing the whole batch. Empty (the default) to feed x. Not saved.
  using ObserverInput = std::function<at::Tensor(const at::Tensor& x)>;
  void set_observer_input(ObserverInput observer_input) {
    observer_input_ = std::move(observer_input);
  }

  /// To call after the observer's state was replaced from outside (a merge across processes):
  /// the fake_quant scale cached from the observer is recomputed at the next quantizing
  /// forward. (Learned lsq scales and pact alphas are not affected.)
  void observer_state_changed() { computed_at_batches_ = -1; }

  void pretty_print(std::ostream& stream) const override;

 private:
  at::Tensor quantize(const at::Tensor& x);
  /// Brings scale/zero_point (and alpha for pact) up to date for quantizing.
  void prepare_qparams(bool observer_had_data);
  /// The learned power-of-two lsq scale as used in the forward (a differentiable tensor).
  at::Tensor learned_scale() const;
  /// pact's alpha as the forward would start from it (without changing state).
  double pact_alpha_value(bool observer_had_data) const;
  void set_scale_state(const at::Tensor& scale, const at::Tensor& zero_point);

  FakeQuantMethod method_;
  observers::Observer observer_;
  FakeQuantizeOptions options_;
  FakeQuantState state_ = FakeQuantState::QAT;
  at::Tensor scale_, log2_scale_, zero_point_, alpha_, initialized_;
  // Observer batch count the cached fake_quant scale was computed at; -1: never (also after
  // a torch::load, so a loaded observer state is honoured).
  int64_t computed_at_batches_ = -1;
  Tap tap_;
  ObserverInput observer_input_;
};

TORCH_MODULE(FakeQuantize);

}  // namespace calq
