#pragma once
// The automatic recipe (`--observer auto`, docs/analysis.md section 5): per quantization
// point, the activation observer whose scale keeps the model output closest to the float
// model's; every single-observer recipe is itself a candidate, so the result is never worse
// than the best of them on the held-out data that chooses; optional cross-layer equalization
// and bias correction, kept only where they help; then, with a target drop, the most
// sensitive points promoted to int16 activations (or float) until the label-free drop on the
// held-out data is at most the target.

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "calq/analysis/metrics.h"
#include "calq/analysis/recipe.h"
#include "calq/deploy/profile.h"

namespace calq {
namespace analysis {

/// A candidate activation observer: a registry name and its keywords.
struct ObserverChoice {
  std::string observer;
  nlohmann::json kwargs = nlohmann::json::object();
  /// "min_max", "percentile(99.99)", "kl", "mse", ...
  std::string label() const;
};

/// min_max, percentile 99.9 / 99.99 / 99.999, kl, mse (the vendor toolchain's "default"
/// searches max, max-percentile and kl the same way).
std::vector<ObserverChoice> default_observer_choices();

/// What a promoted point becomes when a target drop is set.
enum class Promotion {
  int16,       ///< 16-bit activations (min_max observer): ONNX Runtime runs them as float ops
  keep_float,  ///< the output stays float
};
Promotion promotion_from_string(const std::string& name);  ///< "int16" | "float"
std::string to_string(Promotion promotion);

/// Builds a fresh model for `recipe`: the float model under study (its original float
/// weights), BN fused, prepared with prepare_qat(recipe.global, recipe.overrides + whatever
/// the caller always adds, e.g. a float output layer), not calibrated. Called many times;
/// every call returns an independent model. The recipe's steps are not the factory's job
/// (apply_recipe runs them).
using ModelFactory = std::function<std::shared_ptr<torch::nn::Module>(const Recipe& recipe)>;
/// Runs a model built by the factory on one input batch.
using ModuleForward = std::function<at::Tensor(torch::nn::Module& model, const at::Tensor& x)>;
/// Optional held-out score of a calibrated candidate model in VALIDATION (higher is better),
/// e.g. top-1 against labels when the caller has them.
using HeldOutScore = std::function<double(torch::nn::Module& model)>;

struct AutoOptions {
  /// Candidate activation observers. Default default_observer_choices().
  TORCH_ARG(std::vector<ObserverChoice>, choices) = default_observer_choices();
  /// Search the observer per point (else only whole-model candidates). Default true.
  TORCH_ARG(bool, per_layer) = true;
  /// The target accepts unsigned grids (deploy::Profile::unsigned_activations): every output
  /// known non-negative gets one (unsigned_activation_overrides) in every candidate. Default
  /// false (the accelerator's signed grids).
  TORCH_ARG(bool, unsigned_activations) = false;
  /// Also try every candidate on the cross-layer-equalized model; keep what scores better.
  /// Default false.
  TORCH_ARG(bool, equalization) = false;
  TORCH_ARG(EqualizationOptions, equalization_options) = {};
  /// Also try the chosen recipe with bias correction; keep it if it scores better.
  /// Default false.
  TORCH_ARG(bool, bias_correction) = false;
  /// Classifiers: promote points until 100 - top-1 agreement with the float model on the
  /// held-out batches is at most this (percentage points). Unset (default): no promotion.
  TORCH_ARG(c10::optional<double>, target_drop) = c10::nullopt;
  /// Other models: promote until the output SQNR on the held-out batches is at least this.
  TORCH_ARG(c10::optional<double>, target_sqnr_db) = c10::nullopt;
  /// Default int16.
  TORCH_ARG(Promotion, promotion) = Promotion::int16;
  /// Calibration batches (the first ones) on which per-point candidates are compared by the
  /// output KL (or noise-to-signal ratio). Default 8.
  TORCH_ARG(int64_t, search_batches) = 8;
  /// The held-out score; unset (default): label-free, the lowest output divergence from the
  /// float model (KL for classifiers; noise-to-signal ratio otherwise) among the candidates
  /// whose top-1 agreement with it is at least the best single observer's. When set, it
  /// decides and KL / agreement break its ties.
  TORCH_ARG(HeldOutScore, score) = nullptr;
};

/// One whole-model candidate, scored on the held-out batches.
struct CandidateResult {
  std::string name;  ///< "kl", "per-layer", "cle+per-layer", "per-layer+bias_correction", ...
  OutputDivergence held_out;
  double score = 0.0;  ///< the option's score, else -KL (-noise-to-signal ratio)
  bool chosen = false;
};

/// The per-point search of the chosen candidate family.
struct PointDecision {
  std::string name, type;
  std::string chosen;  ///< ObserverChoice::label()
  /// label -> the model's output divergence on the search batches with this point on that
  /// candidate (the other points at their choices so far).
  std::vector<std::pair<std::string, double>> search;
  std::string promoted;  ///< "", "int16" or "float"
};

struct AutoResult {
  Recipe recipe;
  /// Built from `recipe` by the factory and apply_recipe on the calibration batches (the
  /// same scales the search found: checked), in VALIDATION.
  std::shared_ptr<torch::nn::Module> model;
  RecipeApplication application;
  std::vector<CandidateResult> candidates;
  std::vector<PointDecision> points;
  std::vector<std::string> promoted;
  /// The result against the float model on the held-out batches.
  OutputDivergence held_out;
  bool target_met = true;
  /// Whether candidates were scored label-free (-KL) rather than by AutoOptions::score.
  bool label_free_score = true;
  /// Work done: models calibrated, evaluations over the search batches, passes over the
  /// held-out batches.
  int64_t calibrations = 0, search_evaluations = 0, held_out_evaluations = 0;
  double seconds = 0.0;

  /// What was chosen and why; for promoted points, what 16 bits cost on `profile` (its
  /// integer_activation: ONNX Runtime runs int16 activations as DQ -> float op -> Q).
  std::string summary(const deploy::Profile& profile = deploy::ort_cpu_profile()) const;
  nlohmann::json to_json() const;
};

/// Searches the recipe. `base`: the starting recipe (its global activation recipe gives the
/// grid, e.g. the dtype of --bits; every quantized activation recipe gets each candidate
/// observer in turn; weights are kept). `calibration`: batches every candidate is calibrated
/// on (and the first search_batches compare per-point candidates); `held_out`: other batches
/// that choose among whole-model candidates and measure the target drop (never calibrated
/// on). Both non-empty.
AutoResult auto_recipe(const ModelFactory& factory, const ModuleForward& forward,
                       const Recipe& base, const std::vector<at::Tensor>& calibration,
                       const std::vector<at::Tensor>& held_out, const AutoOptions& options = {});

}  // namespace analysis
}  // namespace calq
