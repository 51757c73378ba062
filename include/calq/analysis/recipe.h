#pragma once
// A per-layer quantization recipe as one JSON file (docs/analysis.md, section 5): a global
// qconfig, per-type and per-name overrides, and the label-free recovery steps to run around
// calibration. `calq calibrate --qconfig FILE` and `calq qat --qconfig FILE` read it; a plain
// QConfig file ({"activation": ..., "weight": ...}) is a recipe with only a global qconfig.

#include <torch/arg.h>
#include <nlohmann/json.hpp>

#include <string>

#include "calq/analysis/bias_correction.h"
#include "calq/analysis/equalization.h"
#include "calq/qconfig.h"
#include "calq/workflow.h"

namespace calq {
namespace analysis {

/// The steps of a recipe besides the qconfig, in the order they run.
struct RecipeSteps {
  /// Cross-layer equalization of the float weights before calibration (equalization.h).
  /// Default off.
  TORCH_ARG(bool, cross_layer_equalization) = false;
  TORCH_ARG(EqualizationOptions, equalization) = {};
  /// Bias correction after calibration (bias_correction.h). Default off.
  TORCH_ARG(bool, bias_correction) = false;
};

/// global + overrides (prepare_qat's arguments) + steps.
///
/// JSON (every key but "global" optional; unknown keys are errors, "notes" is free text that
/// tools write to explain their choices and readers ignore):
///   {"calq_recipe": 1,
///    "global": {"activation": {...} | null, "weight": {...} | null},
///    "by_type": {"ConvBnReLU2d": {"activation": ..., "weight": ...}, ...},
///    "by_name": {"conv1": {...}, ...},
///    "steps": {"cross_layer_equalization": false | {"relu6": "keep" | "to_relu", ...},
///              "bias_correction": false | true},
///    "notes": ...}
struct Recipe {
  QConfig global;
  QConfigOverrides overrides;
  RecipeSteps steps;
  /// Free-form explanation (what was chosen and why); written, never interpreted.
  nlohmann::json notes = nullptr;

  nlohmann::json to_json() const;
  /// Reads a recipe or a plain QConfig (then overrides and steps are empty). Errors name the
  /// offending key and list the valid ones.
  static Recipe from_json(const nlohmann::json& j);
  /// Checks every qconfig (QConfig::validate).
  void validate() const;
  /// The same recipe with every activation and weight recipe switched to a QAT method:
  /// activations `activation_method` with `activation_observer`, weights `weight_method`
  /// (weight observers kept); grid keywords (dtype, unsigned, quant range, ...) are kept, so
  /// a QAT model built from it has the calibration's grids (int16 promotions, unsigned
  /// activations, float layers) and load_observer_params copies instead of converting.
  /// An empty `activation_observer` keeps each activation recipe's own observer and its
  /// keywords (QAT goes on observing as the calibration did, per layer). Observer keywords
  /// that the new observer does not take are dropped. Steps are kept: they
  /// say how the calibrated weights were made (and an equalization's ReLU6 -> ReLU, which
  /// the QAT model's architecture needs); QAT does not run them again.
  Recipe for_qat(const std::string& activation_method, const std::string& weight_method,
                 const std::string& activation_observer) const;
  bool operator==(const Recipe& other) const;
  bool operator!=(const Recipe& other) const { return !(*this == other); }
};

/// What apply_recipe did.
struct RecipeApplication {
  bool equalized = false;
  EqualizationReport equalization;
  double calibration_seconds = 0.0;
  bool bias_corrected = false;
  BiasCorrectionReport bias_correction;
};

/// Runs a recipe's steps around calibration on a model prepared with the recipe's qconfig
/// (prepare_qat(model, recipe.global, recipe.overrides)) and not yet calibrated:
/// equalization (if set; the example is batches[0]), calibrate(batches) in state CALIBRATION,
/// bias correction (if set) on the same batches. Deterministic: the same model, recipe and
/// batches give the same scales and weights. Leaves the model in VALIDATION.
RecipeApplication apply_recipe(torch::nn::Module& model, const Forward& forward,
                               const Recipe& recipe, const std::vector<at::Tensor>& batches);

/// Reads a recipe (or a plain QConfig) file; errors name the path. Validated.
Recipe load_recipe(const std::string& path);
/// Writes a recipe atomically.
void save_recipe(const Recipe& recipe, const std::string& path);

/// by_name overrides that give every module of `model` whose output is known non-negative
/// (QuantModuleImpl::output_non_negative: a closing ReLU / ReLU6) and that `global` would
/// quantize an unsigned activation grid (the global activation recipe with "unsigned": true).
/// Entries already in `base` are kept and switched to unsigned where their activation is
/// quantized. The preset for targets that accept unsigned grids (deploy::Profile::
/// unsigned_activations).
QConfigOverrides unsigned_activation_overrides(torch::nn::Module& model, const QConfig& global,
                                               const QConfigOverrides& base = {});

}  // namespace analysis
}  // namespace calq
