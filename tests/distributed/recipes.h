#pragma once
// Models, data and recipes shared by the distributed tests and their worker processes: both
// sides must build bit-identical models and batches from the same seeds.

#include <ATen/ATen.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <limits>
#include <string>
#include <vector>

#include "calq/data/fashion_mnist.h"
#include "calq/observers/registry.h"
#include "calq/qconfig.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace calq {
namespace testing {

/// One activation observer configuration for the calibration equality test.
struct Recipe {
  std::string name;
  std::string observer;
  nlohmann::json kwargs;
  /// averaging constant c of a running-average observer, or -1 (histogram, fixed_scale).
  double averaging_constant;
};

/// Every observer kind; running averages at their defaults and at c = 0 and c = 1.
inline std::vector<Recipe> calibration_recipes() {
  const nlohmann::json empty = nlohmann::json::object();
  return {{"min_max", "min_max", empty, 0.01},
          {"min_max_c0", "min_max", {{"averaging_constant", 0.0}}, 0.0},
          {"min_max_c1", "min_max", {{"averaging_constant", 1.0}}, 1.0},
          {"clip", "clip", {{"xmin", -2.0}, {"xmax", 2.0}}, 1.0},
          {"clip_c03", "clip", {{"xmin", -2.0}, {"xmax", 2.0}, {"averaging_constant", 0.3}}, 0.3},
          {"clip_std", "clip_std", empty, 0.01},
          {"mse", "mse", empty, 0.01},
          {"percentile", "percentile", empty, -1.0},
          {"kl", "kl", empty, -1.0},
          {"mix", "mix", empty, -1.0},
          {"fixed_scale", "fixed_scale", empty, -1.0}};
}

/// The zoo CNN (seed 0), fused and prepared with `recipe` on activations (fake_quant) and
/// per-channel min_max on weights.
inline zoo::Classifier calibration_model(const Recipe& recipe) {
  torch::manual_seed(0);
  zoo::Classifier model = zoo::make_model("cnn");
  fuse(*model);
  prepare_qat(*model, get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                          recipe.observer, "min_max", recipe.kwargs));
  return model;
}

/// `count` batches of 6 images whose spread changes from batch to batch (so running averages
/// move), from seed 1.
inline std::vector<at::Tensor> calibration_batches(int64_t count) {
  torch::manual_seed(1);
  std::vector<at::Tensor> batches;
  for (int64_t i = 0; i < count; ++i) {
    batches.push_back(torch::randn({6, 1, 28, 28}) * (1.0 + 0.4 * static_cast<double>(i % 3)) +
                      0.1 * static_cast<double>(i));
  }
  return batches;
}

/// The QAT recipe of a fake-quant method: activations `method` with min_max, weights lsq for
/// lsq, else fake_quant with per-channel min_max. "fake_quant_percentile": fake_quant with a
/// percentile activation observer (QAT then shares whole activations between the ranks).
inline QConfig qat_recipe(const std::string& method) {
  if (method == "fake_quant_percentile") {
    return get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "percentile",
                               "min_max");
  }
  return get_default_qconfig(method, std::string(method == "lsq" ? "lsq" : "fake_quant"), "min_max",
                             "min_max");
}

/// Observers for the global_observer_input test: (name, kind, spec, keyword arguments).
struct ObserverCase {
  std::string name;
  std::string kind;
  QuantSpec spec;
  nlohmann::json kwargs;
};
inline std::vector<ObserverCase> observer_cases() {
  const nlohmann::json none = nlohmann::json::object();
  return {
      {"min_max", "min_max", QuantSpec(), {{"averaging_constant", 0.3}}},
      {"min_max_per_channel",
       "min_max",
       QuantSpec().per_channel(true).ch_axis(1),
       {{"averaging_constant", 0.3}}},
      {"clip", "clip", QuantSpec(), {{"xmin", -1.5}, {"xmax", 2.0}, {"averaging_constant", 0.3}}},
      {"min_max_skip_nonfinite", "min_max", QuantSpec(), {{"skip_nonfinite", true}}},
      {"percentile", "percentile", QuantSpec(), none},
      {"kl", "kl", QuantSpec(), none},
      {"mix", "mix", QuantSpec(), none},
      {"clip_std", "clip_std", QuantSpec(), none},
      {"mse", "mse", QuantSpec(), none},
      {"fixed_scale", "fixed_scale", QuantSpec(), none}};
}

/// Three global batches [5, 3, 4, 4] (seed 4) with different spreads; the second has a NaN
/// when `with_nan` (for skip_nonfinite).
inline std::vector<at::Tensor> observer_batches(bool with_nan) {
  torch::manual_seed(4);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(torch::randn({5, 3, 4, 4}) * (1.0 + i) - 0.2 * i);
  if (with_nan) batches[1][3][1][2][0] = std::numeric_limits<float>::quiet_NaN();
  return batches;
}

/// The zoo CNN (seed 0), fused, prepared with qat_recipe(method) and calibrated on two
/// batches (in one process, the same on every rank), in state QAT. "float": the float model,
/// not fused (batch norm after the convolution, as float training runs it).
inline zoo::Classifier qat_model(const std::string& method) {
  torch::manual_seed(0);
  zoo::Classifier model = zoo::make_model("cnn");
  if (method == "float") return model;
  fuse(*model);
  prepare_qat(*model, qat_recipe(method));
  calibrate(model, calibration_batches(2));
  set_fake_quantize(*model, FakeQuantState::QAT);
  return model;
}

/// A learnable toy data set: 10 classes, each image the class's template plus noise (seed 2).
inline data::Dataset qat_dataset(int64_t size) {
  torch::manual_seed(2);
  const at::Tensor templates = torch::randn({10, 1, 28, 28});
  data::Dataset d;
  d.labels = torch::randint(0, 10, {size}, torch::kLong);
  d.images = templates.index_select(0, d.labels) + 0.5 * torch::randn({size, 1, 28, 28});
  return d;
}

}  // namespace testing
}  // namespace calq
