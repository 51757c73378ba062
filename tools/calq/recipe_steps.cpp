#include "recipe_steps.h"

#include <iostream>

#include "calq/analysis/equalization.h"
#include "calq/workflow.h"

namespace calq {
namespace cli {

analysis::Recipe with_run_options(const RunConfig& config, analysis::Recipe recipe) {
  if (config.unsigned_activations()) {
    // Module paths and closing activations of the prepared model: a fused float copy.
    ModelMeta meta;
    meta.model = config.model;
    const Model shape = build_model(meta);
    fuse(*shape.module);
    recipe.overrides =
        analysis::unsigned_activation_overrides(*shape.module, recipe.global, recipe.overrides);
  }
  if (config.cle) {
    recipe.steps.cross_layer_equalization(true);
    recipe.steps.equalization(analysis::EqualizationOptions().relu6(
        analysis::relu6_policy_from_string(config.cle_relu6)));
  }
  if (config.bias_correction) recipe.steps.bias_correction(true);
  return recipe;
}

analysis::Recipe calibration_recipe(const RunConfig& config, const std::string& observer) {
  analysis::Recipe recipe;
  recipe.global = calibration_qconfig(config, observer);
  return with_run_options(config, recipe);
}

std::vector<at::Tensor> calibration_images(const Workspace& ws) {
  const RunConfig& c = ws.config;
  // A named object: Images points into it, and a range-for over a temporary's images()
  // would outlive the temporary.
  const data::SourceBatches batches =
      data::SourceBatches::calibration(ws.train, c.calib_batches, c.batch_size, c.seed);
  std::vector<at::Tensor> out;
  for (const at::Tensor& images : batches.images()) out.push_back(images);
  return out;
}

std::vector<at::Tensor> validation_images(const Workspace& ws, int64_t limit) {
  const int64_t n = limit > 0 ? std::min(limit, ws.validation->size()) : ws.validation->size();
  std::vector<at::Tensor> out;
  for (int64_t start = 0; start < n; start += ws.config.batch_size) {
    std::vector<int64_t> rows;
    for (int64_t i = start; i < std::min(n, start + ws.config.batch_size); ++i) rows.push_back(i);
    out.push_back(ws.validation->gather(rows).images);
  }
  return out;
}

analysis::RecipeApplication calibrate_with_recipe(const Workspace& ws, Model& model,
                                                  const analysis::Recipe& recipe) {
  const analysis::RecipeApplication done =
      analysis::apply_recipe(*model.module, model.forward, recipe, calibration_images(ws));
  if (done.equalized) std::cerr << "cross-layer equalization: " << done.equalization.str() << "\n";
  if (done.bias_corrected) std::cerr << "bias correction: " << done.bias_correction.str() << "\n";
  return done;
}

}  // namespace cli
}  // namespace calq
