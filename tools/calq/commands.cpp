// The single-step subcommands: train, calibrate, evaluate, qat, export, check.
#include "commands.h"

#include <filesystem>
#include <iostream>

#include "calq/data/batches.h"
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
  const double top1 =
      pipeline::evaluate(*model, ws.test, /*quantized=*/false, 512, "eval", ws.group);
  if (ws.writer()) {
    std::cout << "float " << config.model << ": top-1 " << top1 << "%"
              << (reused ? " (reused checkpoint)" : "") << "\n";
  }
  return 0;
}

int calibrate_command(const RunConfig& config, const std::string& observer,
                      const std::string& qconfig_file) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  zoo::Classifier float_net = float_model(ws, &seconds, &reused);
  const QConfig qconfig =
      qconfig_file.empty() ? calibration_qconfig(config, observer) : load_qconfig(qconfig_file);
  ModelMeta meta;
  zoo::Classifier model = prepare_from_float(config, *float_net, qconfig, &meta);
  util::Timer timer;
  calibrate_model(ws, model, calibration_images(ws));
  const double calibration_seconds = timer.seconds();
  const double val_top1 =
      pipeline::evaluate(*model, ws.validation, /*quantized=*/true, 512, "eval", ws.group);
  const double top1 =
      pipeline::evaluate(*model, ws.test, /*quantized=*/true, 512, "eval", ws.group);
  const std::string name = qconfig_file.empty() ? observer : "custom";
  const std::string path = config.out + "/calibrated/" + name + ".pt";
  if (!ws.writer()) return 0;
  save_model(*model, meta, path);
  for (const auto& clamped : clamped_scales(*model)) {
    std::cout << "warning: power-of-two scale clamped to [2^-14, 2^-1]: " << clamped << "\n";
  }
  std::cout << "calibrated with " << name << " in " << calibration_seconds
            << " s: validation top-1 " << val_top1 << "%, test top-1 " << top1 << "%  -> " << path
            << "\n";
  return 0;
}

int evaluate_command(const RunConfig& config, const std::string& checkpoint) {
  Workspace ws = open_workspace(config);
  ModelMeta meta;
  zoo::Classifier model = load_model(checkpoint, &meta);
  const double top1 = pipeline::evaluate(*model, ws.test, meta.prepared, 512, "eval", ws.group);
  if (!ws.writer()) return 0;
  std::cout << checkpoint << ": top-1 " << top1 << "%"
            << (meta.prepared ? " (quantized, VALIDATION)" : " (float)") << "\n";
  return 0;
}

int qat_command(const RunConfig& config, const std::string& method, const std::string& calibrated,
                const std::string& qconfig_file) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  zoo::Classifier float_net = float_model(ws, &seconds, &reused);
  zoo::Classifier calibrated_model = load_model(calibrated);
  const QConfig qconfig =
      qconfig_file.empty() ? qat_qconfig(config, method) : load_qconfig(qconfig_file);
  ModelMeta meta;
  zoo::Classifier model = prepare_from_float(config, *float_net, qconfig, &meta);
  const LoadReport report = load_observer_params(*calibrated_model, *model);
  if (ws.writer()) std::cout << "load_observer_params: " << report.str() << "\n";
  TORCH_CHECK(report.ok(), "qat: the calibration in '", calibrated,
              "' does not fit the QAT model (see the mismatches above)");
  const std::string name = qconfig_file.empty() ? method : "custom";
  auto result =
      pipeline::train(*model, ws.train, qat_train_options(config, name).process_group(ws.group));
  const double top1 =
      pipeline::evaluate(*model, ws.test, /*quantized=*/true, 512, "eval", ws.group);
  const std::string path = config.out + "/qat/" + name + ".pt";
  if (!ws.writer()) return 0;
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
  const QConfig qconfig =
      qconfig_file.empty() ? calibration_qconfig(config, "percentile") : load_qconfig(qconfig_file);
  zoo::Classifier float_net = zoo::make_model(config.model);
  ModelMeta meta;
  zoo::Classifier model = prepare_from_float(config, *float_net, qconfig, &meta);
  std::cout << format_qconfig_table(check_qconfig(*model));
  return 0;
}

}  // namespace cli
}  // namespace calq
