#pragma once
// The seed's workflow on calq::nn models (docs/quantization.md section 6 of the semantics):
// fuse -> march -> prepare_qat -> set_fake_quantize -> calibrate -> load_observer_params.

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>

#include <map>
#include <string>
#include <vector>

#include "calq/fake_quantize.h"
#include "calq/qconfig.h"
#include "calq/quant/integer_arithmetic.h"

namespace calq {

/// Target chip generation. bernoulli computes with power-of-two scales only; the others
/// take free float scales.
enum class March { bernoulli, bernoulli2, bayes, nash };
March march_from_string(const std::string& name);  ///< unknown names list the valid ones
std::string to_string(March march);

/// Switches every Conv-BN block of `model` to its BN-folded form. Float output is unchanged
/// (to rounding). Returns the number of blocks fused.
int64_t fuse(torch::nn::Module& model);

/// Per-module qconfig overrides. Priority: global < by_type < by_name < module's own qconfig.
struct QConfigOverrides {
  /// Keyed by calq::nn type name: "Conv2d", "ConvBnReLU2d", "Linear", "Add", "QuantStub", ...
  std::map<std::string, QConfig> by_type;
  /// Keyed by module path as in named_modules(): "features.0", "fc2", ...
  std::map<std::string, QConfig> by_name;
};

/// A module that completes its own preparation once prepare_qat has filled every slot:
/// prepare_qat calls after_prepare() on every module of the model (the model included) that
/// implements this interface. calq::graph::GraphImpl links each weighted node to the quantizer
/// of its input there (graph::link_input_quantizers), so that VALIDATION adds biases as the
/// deployed model does.
class PrepareHook {
 public:
  virtual ~PrepareHook() = default;
  virtual void after_prepare() = 0;
};

/// Fills every quantization slot of every calq::nn module of `model` (weight fake-quant on
/// conv/linear, output fake-quant on quantization points) with the resolved qconfig, then
/// calls PrepareHook::after_prepare of the modules that have one.
/// bernoulli forces power-of-two scales. Throws if the model is already prepared, has no
/// calq::nn module, has an unfused Conv-BN block, or an override names no module / type.
/// The model is left in state QAT, training mode.
void prepare_qat(torch::nn::Module& model, const QConfig& global,
                 const QConfigOverrides& overrides = {}, March march = March::bayes);

/// Sets every FakeQuantize of `model` to `state` and the other modules to training mode
/// (QAT) or eval mode (CALIBRATION, VALIDATION, FLOAT: batch norm uses running statistics, dropout
/// is off). Throws if the model was not prepared.
void set_fake_quantize(torch::nn::Module& model, FakeQuantState state);

/// VALIDATION of every calq::nn module of `model` in the deployed runtime's integer arithmetic
/// (QuantModuleImpl::set_integer_arithmetic), or in the float simulation again (nullopt, the
/// default). Needs the input links of link_input_quantizers (a graph links itself in
/// prepare_qat); a module without them keeps the float simulation. Returns how many modules
/// were set.
int64_t set_integer_arithmetic(torch::nn::Module& model,
                               const c10::optional<IntegerArithmetic>& arithmetic);

/// What load_observer_params did. Quantizers are named by module path
/// ("conv1.output_fake_quant"), state entries by full name ("conv1.output_fake_quant.scale").
struct LoadReport {
  /// State entries set from the source (verbatim, or the carried range and derived scale).
  std::vector<std::string> copied;
  /// Quantizers whose scale was derived for another grid: "path: why" (e.g. int8 -> int16).
  std::vector<std::string> converted;
  /// Source observer entries that do not apply to the target's observer kind (histogram,
  /// first_min, ...): expected when calibration and QAT use different observers; not a
  /// problem.
  std::vector<std::string> not_applicable;
  /// Quantizers of `to` with no quantizer at the same path in `from`: left as they were.
  std::vector<std::string> missing;
  /// Quantizers of `from` with no quantizer at the same path in `to`: ignored.
  std::vector<std::string> unexpected;
  /// Quantizers that could not be loaded: "path: why" (per-channel layout, channel count,
  /// a source that was never calibrated). Left as they were.
  std::vector<std::string> mismatched;
  /// True when every quantizer of both models was loaded (copied or converted).
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string str() const;
};

/// Starts every quantizer of `to` from the calibration of the quantizer at the same path in
/// `from` (seed step 8): FakeQuantizeImpl::load_calibration, whose policy docs/observers.md
/// tabulates (same grid: exact scale; other dtype / range / symmetry / power of two: scale
/// derived from the calibrated range; other per-channel layout: mismatched). Each quantizer
/// then starts from the calibrated scale in its own method's terms (lsq scale, pact alpha).
/// `from` is only read. Never throws on a mismatch: it reports it.
LoadReport load_observer_params(const torch::nn::Module& from, torch::nn::Module& to);

/// FakeQuantizeImpl::project_parameters for every quantizer of `model`: call it after each
/// optimizer step of a QAT loop (pipeline::train does), so that learned scales and alphas are
/// valid whenever they are read or saved.
void project_quantizer_parameters(torch::nn::Module& model);

/// Quantizers (module paths) whose power-of-two scale is clamped to [2^-14, 2^-1]
/// (FakeQuantizeImpl::scale_clamped): at 2^-1 an int8 tensor saturates at 63.5.
std::vector<std::string> clamped_scales(const torch::nn::Module& model);

/// Copies every float parameter and buffer (not fake-quant state) from `from` to `to` by
/// name, to build a fresh QAT model from a trained float model (step 7). Throws on a missing
/// or mismatched entry, naming it.
void copy_float_state(torch::nn::Module& from, torch::nn::Module& to);

/// One row of check_qconfig.
struct QuantPointInfo {
  std::string name;       ///< module path
  std::string type_name;  ///< calq::nn type, or the C++ type of a foreign module
  std::string weight;     ///< "method/observer spec" or "float"; "" without a weight
  std::string output;     ///< "method/observer spec", "float", or "pass-through"
  bool foreign = false;   ///< not a calq::nn module: computes in float, unquantized
  bool unfused = false;   ///< a Conv-BN block not yet fused
};

/// Every module with its quantization, the "check_qconfig" of the original plugin.
std::vector<QuantPointInfo> check_qconfig(torch::nn::Module& model);
/// check_qconfig as an aligned text table.
std::string format_qconfig_table(const std::vector<QuantPointInfo>& rows);

/// Step 3-4: CALIBRATION state, then forwards every batch without gradients. `model` is a
/// holder with forward(Tensor). Leaves the model in CALIBRATION state.
template <typename ModelHolder, typename Batches>
void calibrate(ModelHolder& model, const Batches& batches) {
  set_fake_quantize(*model, FakeQuantState::CALIBRATION);
  torch::NoGradGuard no_grad;
  int64_t count = 0;
  for (const auto& batch : batches) {
    model->forward(batch);
    ++count;
  }
  TORCH_CHECK(count > 0, "calibrate: no calibration batches were given; pass at least one");
}

}  // namespace calq
