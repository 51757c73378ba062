#include "auto_calibration.h"

#include <torch/utils.h>

#include <map>

#include "recipe_steps.h"

namespace calq {
namespace cli {

AutoCalibration auto_calibrate(const Workspace& ws, const Model& float_model, bool labelled) {
  const RunConfig& c = ws.config;
  analysis::Recipe base = calibration_recipe(c, "min_max");  // the grid; auto picks observers
  base.steps = analysis::RecipeSteps();  // auto tries --cle / --bias-correction itself
  // Every model the search builds, by module, with its CLI description (forward, metadata).
  auto built = std::make_shared<std::map<const torch::nn::Module*, std::pair<Model, ModelMeta>>>();
  const analysis::ModelFactory factory = [&c, &float_model, built](const analysis::Recipe& r) {
    ModelMeta meta;
    Model model = prepare_from_float(c, float_model, r, &meta);
    (*built)[model.module.get()] = {model, meta};
    return model.module;
  };
  const analysis::ModuleForward forward = [built](torch::nn::Module& m, const at::Tensor& x) {
    return built->at(&m).first.forward(x);
  };
  analysis::AutoOptions options;
  options.unsigned_activations(c.unsigned_activations())
      .equalization(c.cle)
      .equalization_options(
          analysis::EqualizationOptions().relu6(analysis::relu6_policy_from_string(c.cle_relu6)))
      .bias_correction(c.bias_correction)
      .promotion(analysis::promotion_from_string(c.promotion));
  if (c.target_drop >= 0.0) options.target_drop(c.target_drop);
  if (labelled && ws.labelled) {
    options.score([&ws, forward](torch::nn::Module& model) {
      torch::NoGradGuard no_grad;
      // Top-1 in --arithmetic's arithmetic; the search's own divergences stay in the float
      // simulation (reset on the way out).
      struct Arithmetic {
        torch::nn::Module& model;
        ~Arithmetic() { set_integer_arithmetic(model, c10::nullopt); }
      } scope{model};
      set_integer_arithmetic(model, arithmetic_of(ws.config));
      int64_t correct = 0;
      for (const auto& batch :
           data::SourceBatches(ws.validation, data::BatchOptions(ws.config.batch_size))) {
        correct += (forward(model, batch.images).argmax(1) == batch.labels).sum().item<int64_t>();
      }
      return 100.0 * static_cast<double>(correct) / static_cast<double>(ws.validation->size());
    });
  }
  AutoCalibration out;
  out.result = analysis::auto_recipe(factory, forward, base, calibration_images(ws),
                                     validation_images(ws), options);
  const auto& chosen = built->at(out.result.model.get());
  out.model = chosen.first;
  out.meta = chosen.second;
  out.meta.qconfig = out.result.recipe.global;
  out.meta.overrides = out.result.recipe.overrides;
  out.meta.steps = out.result.recipe.steps;
  return out;
}

}  // namespace cli
}  // namespace calq
