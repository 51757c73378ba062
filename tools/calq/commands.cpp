// The single-step subcommands: train, calibrate, evaluate, qat, export, check.
#include "commands.h"

#include <filesystem>
#include <iostream>

#include "auto_calibration.h"
#include "calq/data/batches.h"
#include "calq/pipeline/statistics.h"
#include "calq/pipeline/training.h"
#include "calq/util/atomic_file.h"
#include "calq/util/timer.h"
#include "steps.h"

namespace calq {
namespace cli {

int train_command(const RunConfig& config) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  zoo::Classifier model = float_model(ws, &seconds, &reused);
  const double top1 = pipeline::evaluate(*model, ws.test, /*quantized=*/false);
  std::cout << "float " << config.model << ": top-1 " << top1 << "%"
            << (reused ? " (reused checkpoint)" : "") << "\n";
  return 0;
}

int calibrate_command(const RunConfig& config, const std::string& observer,
                      const std::string& qconfig_file) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  zoo::Classifier float_net = float_model(ws, &seconds, &reused);
  const std::vector<at::Tensor> calibration = calibration_images(ws);
  ModelMeta meta;
  zoo::Classifier model;
  util::Timer timer;
  const std::string name = qconfig_file.empty() ? observer : "custom";
  if (qconfig_file.empty() && observer == "auto") {
    AutoCalibration chosen = auto_calibrate(ws, *float_net, calibration, /*labeled=*/false);
    std::cout << chosen.result.summary();
    model = chosen.model;
    meta = chosen.meta;
    const std::string recipe_path = config.out + "/calibrated/auto.recipe.json";
    analysis::save_recipe(chosen.result.recipe, recipe_path);
    std::cout << "recipe (calibrate --qconfig / qat --qconfig accept it): " << recipe_path << "\n";
  } else {
    // A qconfig file may be a plain QConfig or a per-layer recipe (calq::analysis::Recipe).
    const analysis::Recipe recipe =
        qconfig_file.empty() ? calibration_recipe(config, observer)
                             : with_run_options(config, analysis::load_recipe(qconfig_file));
    model = prepare_from_float(config, *float_net, recipe, &meta);
    calibrate_with(*model, recipe, calibration);
  }
  const double calibration_seconds = timer.seconds();
  const double val_top1 = pipeline::evaluate(*model, ws.validation, /*quantized=*/true);
  const double top1 = pipeline::evaluate(*model, ws.test, /*quantized=*/true);
  const std::string path = config.out + "/calibrated/" + name + ".pt";
  save_model(*model, meta, path);
  for (const auto& clamped : clamped_scales(*model)) {
    std::cout << "warning: power-of-two scale clamped to [2^-14, 2^-1]: " << clamped << "\n";
  }
  std::cout << "calibrated with " << name << " in " << calibration_seconds
            << " s: validation top-1 " << val_top1 << "%, test top-1 " << top1 << "%  -> " << path
            << "\n";
  return 0;
}

int evaluate_command(const RunConfig& config, const std::string& checkpoint,
                     const std::string& versus) {
  Workspace ws = open_workspace(config);
  ModelMeta meta;
  zoo::Classifier model = load_model(checkpoint, &meta);
  const pipeline::Evaluation a = pipeline::evaluate_each(*model, ws.test, meta.prepared);
  std::cout << checkpoint << ": top-1 " << a.top1 << "%"
            << (meta.prepared ? " (quantized, VALIDATION)" : " (float)") << "\n";
  if (!versus.empty()) {
    ModelMeta other_meta;
    zoo::Classifier other = load_model(versus, &other_meta);
    const pipeline::Evaluation b = pipeline::evaluate_each(*other, ws.test, other_meta.prepared);
    std::cout << versus << ": top-1 " << b.top1 << "%"
              << (other_meta.prepared ? " (quantized, VALIDATION)" : " (float)") << "\n";
    const pipeline::PairedComparison c = pipeline::compare_paired(a.correct, b.correct);
    std::cout << "paired, " << versus << " - " << checkpoint << " on " << c.n
              << " test images: " << c.str() << " (" << c.verdict() << ")\n";
  }
  return 0;
}

int qat_command(const RunConfig& config, const std::string& method, const std::string& calibrated,
                const std::string& qconfig_file) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  zoo::Classifier float_net = float_model(ws, &seconds, &reused);
  ModelMeta calibrated_meta;
  zoo::Classifier calibrated_model = load_model(calibrated, &calibrated_meta);
  // Without --qconfig, QAT keeps the calibration's per-layer grids (auto's int16 promotions,
  // unsigned grids) with the QAT method; a --qconfig file (QConfig or recipe) is used as is.
  const analysis::Recipe recipe = qconfig_file.empty()
                                      ? qat_recipe(config, method, &calibrated_meta.recipe)
                                      : analysis::load_recipe(qconfig_file);
  ModelMeta meta;
  zoo::Classifier model = prepare_from_float(config, *float_net, recipe, &meta);
  copy_float_state(*calibrated_model, *model);  // equalized / bias-corrected weights, if any
  const LoadReport report = load_observer_params(*calibrated_model, *model);
  std::cout << "load_observer_params: " << report.str() << "\n";
  TORCH_CHECK(report.ok(), "qat: the calibration in '", calibrated,
              "' does not fit the QAT model (see the mismatches above)");
  const std::string name = qconfig_file.empty() ? method : "custom";
  auto result = pipeline::train(*model, ws.train, qat_train_options(config, name));
  const double top1 = pipeline::evaluate(*model, ws.test, /*quantized=*/true);
  const std::string path = config.out + "/qat/" + name + ".pt";
  save_model(*model, meta, path);
  std::filesystem::remove(qat_resume_checkpoint(config, name));
  std::cout << "qat " << name << ": top-1 " << top1 << "%, " << result.seconds_per_epoch
            << " s/epoch -> " << path << "\n";
  return 0;
}

int export_command(const std::string& checkpoint, const std::string& json_path) {
  ModelMeta meta;
  zoo::Classifier model = load_model(checkpoint, &meta);
  TORCH_CHECK(meta.prepared, "export: '", checkpoint, "' is a float model; it has no scales");
  util::write_file_atomic(json_path, export_scales(*model).dump(2) + "\n");
  std::cout << "scales of " << checkpoint << " -> " << json_path << "\n";
  return 0;
}

int check_command(const RunConfig& config, const std::string& qconfig_file) {
  config.validate();
  const analysis::Recipe recipe =
      qconfig_file.empty() ? calibration_recipe(config, "percentile")
                           : with_run_options(config, analysis::load_recipe(qconfig_file));
  zoo::Classifier float_net = zoo::make_model(config.model);
  ModelMeta meta;
  zoo::Classifier model = prepare_from_float(config, *float_net, recipe, &meta);
  std::cout << format_qconfig_table(check_qconfig(*model));
  return 0;
}

}  // namespace cli
}  // namespace calq
