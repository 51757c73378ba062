#include "auto_calibration.h"

#include <torch/utils.h>

#include "calq/data/batches.h"

namespace calq {
namespace cli {

AutoCalibration auto_calibrate(const Workspace& ws, zoo::ClassifierImpl& float_model,
                               const std::vector<at::Tensor>& calibration, bool labeled) {
  const RunConfig& c = ws.config;
  analysis::Recipe base;
  base.global = calibration_qconfig(c, "min_max");  // the grid; auto chooses the observers
  const analysis::ModelFactory factory = [&](const analysis::Recipe& recipe) {
    return std::shared_ptr<torch::nn::Module>(prepare_from_float(c, float_model, recipe, nullptr));
  };
  const analysis::ModuleForward forward = [](torch::nn::Module& model, const at::Tensor& x) {
    return static_cast<zoo::ClassifierImpl&>(model).forward(x);
  };
  analysis::AutoOptions options;
  options.unsigned_activations(c.unsigned_activations())
      .equalization(c.cle)
      .equalization_options(
          analysis::EqualizationOptions().relu6(analysis::relu6_policy_from_string(c.cle_relu6)))
      .bias_correction(c.bias_correction)
      .promotion(analysis::promotion_from_string(c.promotion));
  if (c.target_drop >= 0.0) options.target_drop(c.target_drop);
  if (labeled) {
    options.score([&ws, &forward](torch::nn::Module& model) {
      torch::NoGradGuard no_grad;
      int64_t correct = 0;
      for (const auto& batch : data::Batches(ws.validation, data::BatchOptions(500))) {
        correct += (forward(model, batch.images).argmax(1) == batch.labels).sum().item<int64_t>();
      }
      return 100.0 * static_cast<double>(correct) / static_cast<double>(ws.validation.size());
    });
  }
  AutoCalibration out;
  out.result =
      analysis::auto_recipe(factory, forward, base, calibration, validation_images(ws), options);
  out.model = std::dynamic_pointer_cast<zoo::ClassifierImpl>(out.result.model);
  TORCH_INTERNAL_ASSERT(out.model != nullptr, "auto: the factory built a zoo classifier");
  out.meta.model = c.model;
  out.meta.prepared = true;
  out.meta.recipe = out.result.recipe;
  out.meta.march = c.march;
  return out;
}

}  // namespace cli
}  // namespace calq
