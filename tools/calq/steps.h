#pragma once
// The workflow steps the subcommands share: data, float model, calibration, QAT, checkpoints.

#include <nlohmann/json.hpp>

#include <string>

#include "calq/analysis/recipe.h"
#include "calq/data/fashion_mnist.h"
#include "calq/pipeline/training.h"
#include "calq/qconfig.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"
#include "config.h"

namespace calq {
namespace cli {

struct Workspace {
  RunConfig config;
  data::Dataset train;       ///< training images minus the validation split
  data::Dataset validation;  ///< --val-size training images held out for every choice
  data::Dataset test;
};

/// Reads the data set (limits applied), holds out the validation split and sets the thread
/// count.
Workspace open_workspace(const RunConfig& config);

/// The calibration recipe: fake_quant everywhere, `observer` on activations, min_max on
/// weights, dtypes from --bits.
QConfig calibration_qconfig(const RunConfig& config, const std::string& observer);
/// The QAT recipe of `method`: activations `method` with --qat-observer; weights lsq for lsq,
/// else fake_quant; min_max weight observer.
QConfig qat_qconfig(const RunConfig& config, const std::string& method);

/// The calibration recipe of `observer`: calibration_qconfig, unsigned grids after ReLU /
/// ReLU6 when --target accepts them, and the --cle / --bias-correction steps.
analysis::Recipe calibration_recipe(const RunConfig& config, const std::string& observer);
/// `recipe` with the target's unsigned grids (when --target accepts them) and the --cle /
/// --bias-correction steps added.
analysis::Recipe with_run_options(const RunConfig& config, analysis::Recipe recipe);
/// The QAT recipe of `method`: the calibrated model's recipe switched to the QAT method
/// (analysis::Recipe::for_qat: per-layer grids, int16 promotions and unsigned grids kept), or
/// qat_qconfig with the target's unsigned grids when `calibrated` is null.
analysis::Recipe qat_recipe(const RunConfig& config, const std::string& method,
                            const analysis::Recipe* calibrated = nullptr);

/// Where an interrupted QAT of `name` resumes from (removed once it finished).
std::string qat_resume_checkpoint(const RunConfig& config, const std::string& name);
/// Steps 9-10 for `name`: --qat-epochs of Adam in state QAT (weights at --qat-lr, quantizer
/// parameters at --qat-scale-lr, --qat-schedule, the last --qat-freeze-bn-epochs with batch
/// norm frozen), with a resumable checkpoint.
pipeline::TrainOptions qat_train_options(const RunConfig& config, const std::string& name);

/// A model as saved by calq: parameters in `path`, how to rebuild it in `path`.json.
struct ModelMeta {
  std::string model;
  bool prepared = false;
  analysis::Recipe recipe;  ///< prepared models: global qconfig, overrides, steps that ran
  std::string march = "bayes";
  nlohmann::json to_json() const;
  static ModelMeta from_json(const nlohmann::json& j);
};

/// Builds the model of `meta` (fused and prepared when meta.prepared), with the last layer's
/// output kept float.
zoo::Classifier build_model(const ModelMeta& meta);
void save_model(zoo::ClassifierImpl& model, const ModelMeta& meta, const std::string& path);
/// Rebuilds and loads a model saved by save_model; errors name the file and the mismatch.
zoo::Classifier load_model(const std::string& path, ModelMeta* meta = nullptr);

/// Trains the float model, or reuses OUT/float_<model>.pt when it was trained with the same
/// settings. Returns the model; *seconds_per_epoch is 0 when reused.
zoo::Classifier float_model(const Workspace& ws, double* seconds_per_epoch, bool* reused);

/// A fresh prepared model holding the float model's weights (steps 2 and 7).
zoo::Classifier prepare_from_float(const RunConfig& config, zoo::ClassifierImpl& float_model,
                                   const QConfig& qconfig, ModelMeta* meta);
/// The same with a per-layer recipe (its steps are not run: calibrate_with does).
zoo::Classifier prepare_from_float(const RunConfig& config, zoo::ClassifierImpl& float_model,
                                   const analysis::Recipe& recipe, ModelMeta* meta);
/// Calibrates a model prepared with `recipe` on `images` (analysis::apply_recipe: cross-layer
/// equalization, calibration, bias correction) and says what the steps did on stderr.
analysis::RecipeApplication calibrate_with(zoo::ClassifierImpl& model,
                                           const analysis::Recipe& recipe,
                                           const std::vector<at::Tensor>& images);
/// The validation split's images in batches (labels unused): auto's held-out data.
std::vector<at::Tensor> validation_images(const Workspace& ws, int64_t batch_size = 500);

/// The calibration batches (images only) of step 4: --calib-batches batches of --batch-size
/// training images, drawn with --seed.
std::vector<at::Tensor> calibration_images(const Workspace& ws);

/// Every quantization point's scale and zero point, per module path.
nlohmann::json export_scales(zoo::ClassifierImpl& model);

}  // namespace cli
}  // namespace calq
