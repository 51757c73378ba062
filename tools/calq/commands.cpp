// The single-step subcommands: train, calibrate, evaluate, qat, export, check, infer.
#include "commands.h"

#include <filesystem>
#include <iostream>

#include "auto_calibration.h"
#include "calq/analysis/recipe.h"
#include "calq/deploy/integer_engine.h"
#include "calq/deploy/onnxruntime.h"
#include "calq/deploy/qdq_export.h"
#include "calq/pipeline/statistics.h"
#include "calq/pipeline/training.h"
#include "calq/trace.h"
#include "calq/util/atomic_file.h"
#include "calq/util/npy.h"
#include "calq/util/timer.h"
#include "recipe_steps.h"
#include "steps.h"

namespace calq {
namespace cli {
namespace {

// Top-1 on the labels, or agreement with the float model when the data has none; shared
// between the ranks of a job (every rank calls it).
pipeline::Evaluation score(const Workspace& ws, Model& model, const Model& reference,
                           const data::SourcePtr& data, bool quantized) {
  const pipeline::Forward* against = ws.labelled ? nullptr : &reference.forward;
  reference.module->eval();
  if (quantized) use_arithmetic(ws.config, model);
  return pipeline::evaluate_each(*model.module, model.forward, data, quantized, against, 512,
                                 "eval", ws.group);
}

}  // namespace

int train_command(const RunConfig& config) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  Model model = float_model(ws, &seconds, &reused);
  const double val = score(ws, model, model, ws.validation, false).top1;
  const double test = ws.test ? score(ws, model, model, ws.test, false).top1 : 0.0;
  if (!ws.writer()) return 0;
  std::cout << "float " << config.model << ": validation top-1 " << val << "%";
  if (ws.test) std::cout << ", test top-1 " << test << "%";
  std::cout << (reused ? " (reused)" : "") << "\n";
  return 0;
}

int calibrate_command(const RunConfig& config, const std::string& observer,
                      const std::string& qconfig_file) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  Model float_net = float_model(ws, &seconds, &reused);
  ModelMeta meta;
  Model model;
  util::Timer timer;
  if (qconfig_file.empty() && observer == "auto") {
    AutoCalibration chosen = auto_calibrate(ws, float_net, /*labelled=*/false);
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
    model = prepare_from_float(config, float_net, recipe, &meta);
    if (recipe.steps.cross_layer_equalization() || recipe.steps.bias_correction()) {
      calibrate_with_recipe(ws, model, recipe);
    } else {
      calibrate_model(ws, model);  // streams the batches
    }
  }
  const double calibration_seconds = timer.seconds();
  const double val_top1 = score(ws, model, float_net, ws.validation, true).top1;
  const double test_top1 = ws.test ? score(ws, model, float_net, ws.test, true).top1 : 0.0;
  const std::string name = qconfig_file.empty() ? observer : "custom";
  const std::string path = config.out + "/calibrated/" + name + ".pt";
  if (!ws.writer()) return 0;
  save_model(model, meta, path);
  for (const auto& clamped : clamped_scales(*model.module)) {
    std::cout << "warning: power-of-two scale clamped to [2^-14, 2^-1]: " << clamped << "\n";
  }
  std::cout << "calibrated with " << name << " in " << calibration_seconds
            << " s: validation top-1 " << val_top1 << "%";
  if (ws.test) std::cout << ", test top-1 " << test_top1 << "%";
  std::cout << "  -> " << path << "\n";
  return 0;
}

int evaluate_command(const RunConfig& config, const std::string& checkpoint,
                     const std::string& versus) {
  Workspace ws = open_workspace(config);
  const data::SourcePtr set = ws.test ? ws.test : ws.validation;
  // One saved model's top-1 (labels, or agreement with its own float weights without them).
  std::vector<std::pair<Model, bool>> loaded;  // each model and whether it is quantized
  auto evaluate_one = [&ws, &set, &loaded](const std::string& path) {
    ModelMeta meta;
    Model reference;
    if (is_onnx_path(path)) {
      // A float ONNX model, or a deployed QDQ one (calq's export or another tool's).
      bool quantized = false;
      Model onnx_model = load_onnx_model(path, &quantized);
      meta.prepared = quantized;
      // Without labels the score is agreement with a float model: a float file is its own;
      // a QDQ file's is --model's when that is a float ONNX file (the model it deploys), else
      // the file's own dequantized weights in float.
      if (!quantized) reference = onnx_model;
      if (quantized && is_onnx_path(ws.config.model)) {
        bool model_quantized = false;
        Model float_onnx = load_onnx_model(ws.config.model, &model_quantized);
        if (!model_quantized) reference = float_onnx;
      }
      if (reference.module == nullptr) {
        if (!ws.labelled && ws.writer()) {
          std::cout << "note: no labels and no float --model FILE.onnx: " << path
                    << " is scored against its own dequantized weights in float, which hides "
                       "their quantization error\n";
        }
        ModelMeta float_meta;
        float_meta.model = std::filesystem::absolute(path).string();
        reference = build_model(float_meta);
      }
      loaded.emplace_back(onnx_model, quantized);
    } else {
      loaded.emplace_back(load_model(path, &meta), false);
      loaded.back().second = meta.prepared;
      ModelMeta float_meta = meta;
      float_meta.prepared = false;
      reference = build_model(float_meta);
      copy_float_state(*loaded.back().first.module, *reference.module);
    }
    Model& model = loaded.back().first;
    check_workspace_fits(model, ws);
    const pipeline::Evaluation e = score(ws, model, reference, set, meta.prepared);
    if (ws.writer()) {
      std::cout << path << ": " << (ws.test ? "test" : "validation") << " top-1 " << e.top1 << "%"
                << (meta.prepared
                        ? " (quantized, VALIDATION, " + ws.config.arithmetic + " arithmetic)"
                        : std::string(" (float)"))
                << "\n";
    }
    return e;
  };
  const pipeline::Evaluation a = evaluate_one(checkpoint);
  if (versus.empty()) return 0;
  // The same images for both: the difference, its 95 % interval and McNemar's test.
  const pipeline::Evaluation b = evaluate_one(versus);
  const pipeline::PairedComparison c = pipeline::compare_paired(a.correct, b.correct);
  if (ws.writer()) {
    std::cout << "paired, " << versus << " - " << checkpoint << " on " << c.n << " "
              << (ws.test ? "test" : "validation") << " images: " << c.str() << " (" << c.verdict()
              << ")\n";
  }
  // Against a float model, the label-free fidelity too: how often the quantized model gives
  // the float model's class (the accuracy difference above nets flips in both directions).
  Model& base = loaded[0].first;
  Model& other = loaded[1].first;
  if (ws.labelled && !loaded[0].second && loaded[1].second) {
    base.module->eval();
    const pipeline::Evaluation f = pipeline::evaluate_each(*other.module, other.forward, set, true,
                                                           &base.forward, 512, "eval", ws.group);
    if (ws.writer()) {
      std::cout << "top-1 agreement of " << versus << " with " << checkpoint << ": " << f.top1
                << "% (" << static_cast<int64_t>(std::llround((100.0 - f.top1) * c.n / 100.0))
                << " of " << c.n << " images differ), output SQNR " << f.sqnr_db << " dB\n";
    }
  }
  return 0;
}

int qat_command(const RunConfig& config, const std::string& method, const std::string& calibrated,
                const std::string& qconfig_file) {
  Workspace ws = open_workspace(config);
  double seconds = 0.0;
  bool reused = false;
  Model float_net = float_model(ws, &seconds, &reused);
  ModelMeta calibrated_meta;
  Model calibrated_model = load_model(calibrated, &calibrated_meta);
  TORCH_CHECK(calibrated_meta.prepared && calibrated_meta.qconfig.activation.has_value(), "qat: '",
              calibrated, "' is not a calibrated model (no quantized activations)");
  // Without --qconfig, QAT keeps the calibration's per-layer grids (auto's observers and int16
  // promotions, unsigned grids) with the QAT method; a --qconfig file is used as it is.
  analysis::Recipe recipe;
  if (qconfig_file.empty()) {
    const QConfig global =
        qat_qconfig(config, method, calibrated_meta.qconfig.activation->observer);
    const std::string weight_method = method == "lsq" ? "lsq" : "fake_quant";
    recipe = calibrated_meta.recipe().for_qat(
        method, weight_method, config.qat_observer == "calibrated" ? "" : config.qat_observer);
    recipe.global = global;
  } else {
    recipe = analysis::load_recipe(qconfig_file);
  }
  ModelMeta meta;
  Model model = prepare_from_float(config, float_net, recipe, &meta);
  copy_float_state(*calibrated_model.module, *model.module);  // equalized / corrected weights
  const LoadReport report = load_observer_params(*calibrated_model.module, *model.module);
  if (ws.writer()) std::cout << "load_observer_params: " << report.str() << "\n";
  TORCH_CHECK(report.ok(), "qat: the calibration in '", calibrated,
              "' does not fit the QAT model (see the mismatches above)");
  const std::string name = qconfig_file.empty() ? method : "custom";
  float_net.module->eval();
  auto result = pipeline::train(*model.module, model.forward, ws.train,
                                qat_train_options(config, name).process_group(ws.group),
                                config.distills(ws.labelled) ? &float_net.forward : nullptr);
  const double top1 = score(ws, model, float_net, ws.validation, true).top1;
  const std::string path = config.out + "/qat/" + name + ".pt";
  if (!ws.writer()) return 0;
  save_model(model, meta, path);
  std::filesystem::remove(qat_resume_checkpoint(config, name));
  std::cout << "qat " << name << " (" << (config.distills(ws.labelled) ? "distillation" : "labels")
            << "): validation top-1 " << top1 << "%, " << result.seconds_per_epoch << " s/epoch -> "
            << path << "\n";
  return 0;
}

int export_command(const std::string& checkpoint, const std::string& json_path,
                   const std::string& onnx_path) {
  TORCH_CHECK(!json_path.empty() || !onnx_path.empty(),
              "export: give --json FILE (scales) and/or --onnx FILE (QDQ ONNX)");
  ModelMeta meta;
  Model model = load_model(checkpoint, &meta);
  TORCH_CHECK(meta.prepared, "export: '", checkpoint, "' is a float model; it has no scales");
  if (!json_path.empty()) {
    util::write_file_atomic(json_path, export_scales(*model.module).dump(2) + "\n");
    std::cout << "scales of " << checkpoint << " -> " << json_path << "\n";
  }
  if (!onnx_path.empty()) {
    deploy::ExportReport report;
    if (model.imported_model) {
      std::vector<int64_t> shape = {1};
      shape.insert(shape.end(), model.example_shape.begin(), model.example_shape.end());
      report = deploy::export_qdq(*model.imported_model, {at::zeros(shape)}, onnx_path);
    } else {
      const Trace t = trace_model(model);
      link_input_quantizers(t);
      report = deploy::export_qdq(*model.module, t, onnx_path);
    }
    std::cout << "QDQ ONNX of " << checkpoint << " -> " << onnx_path << ": " << report.str()
              << "\n";
  }
  return 0;
}

int check_command(const RunConfig& config, const std::string& qconfig_file) {
  config.validate();
  const QConfig qconfig =
      qconfig_file.empty() ? calibration_qconfig(config, "percentile") : load_qconfig(qconfig_file);
  ModelMeta float_meta;
  float_meta.model =
      is_onnx_path(config.model) ? std::filesystem::absolute(config.model).string() : config.model;
  const Model float_net = build_model(float_meta);
  ModelMeta meta;
  Model model = prepare_from_float(config, float_net, qconfig, &meta);
  std::cout << format_qconfig_table(check_qconfig(*model.module));
  return 0;
}

int infer_command(const RunConfig& config, const std::string& model_path,
                  const std::string& checkpoint, const std::string& input,
                  const std::string& output, const std::string& engine,
                  const std::string& requantization) {
  TORCH_CHECK(engine == "sim" || engine == "int" || engine == "ort", "infer: unknown engine '",
              engine,
              "'; valid engines: sim (calq's simulation), int (integer engine), ort "
              "(ONNX Runtime on the QDQ export)");
  const int threads = config.threads > 0 ? static_cast<int>(config.threads) : 1;
  at::set_num_threads(threads);
  const at::Tensor x = util::read_npy(input).to(at::kFloat);
  Model model;
  bool prepared = false;
  if (!checkpoint.empty()) {
    ModelMeta meta;
    model = load_model(checkpoint, &meta);
    prepared = meta.prepared;
  } else {
    TORCH_CHECK(!model_path.empty(), "infer: give --model FILE.onnx or --checkpoint FILE");
    if (is_onnx_path(model_path)) {
      model = load_onnx_model(model_path, &prepared);  // a QDQ file computes as it is written
    } else {
      ModelMeta meta;
      meta.model = model_path;
      model = build_model(meta);
    }
  }
  TORCH_CHECK(x.dim() >= 1, "infer: '", input, "' holds a scalar; give a batch [N, ...]");
  check_data_fits(model, x.sizes().slice(1).vec(), "infer --input '" + input + "'");
  TORCH_CHECK(engine == "sim" || prepared, "infer: engine '", engine,
              "' needs a prepared model (--checkpoint of a calibrated or QAT model)");
  std::vector<at::Tensor> outputs;
  if (engine == "sim") {
    if (prepared) {
      set_fake_quantize(*model.module, FakeQuantState::VALIDATION);
      use_arithmetic(config, model);
    } else {
      model.module->eval();
    }
    torch::NoGradGuard no_grad;
    outputs = model.forward_all(x);
  } else if (model.imported_model) {
    if (engine == "int") {
      outputs = deploy::run_integer(*model.imported_model->graph, {x},
                                    deploy::IntegerEngineOptions().requantization(
                                        deploy::requantization_from_string(requantization)))
                    .outputs;
    } else if (checkpoint.empty()) {
      // A QDQ file: ONNX Runtime runs the file itself (another tool's placement included).
      deploy::OrtOptions options;
      options.threads = threads;
      outputs = deploy::run_onnxruntime(model_path, {x}, options).outputs;
    } else {
      const std::string onnx = output + ".qdq.onnx";
      deploy::export_qdq(*model.imported_model, {x.narrow(0, 0, 1)}, onnx);
      deploy::OrtOptions options;
      options.threads = threads;
      outputs = deploy::run_onnxruntime(onnx, {x}, options).outputs;
      std::filesystem::remove(onnx);
    }
  } else {
    const Trace t = trace_model(model);
    link_input_quantizers(t);
    if (engine == "int") {
      outputs = deploy::run_integer(*model.module, t, {x},
                                    deploy::IntegerEngineOptions().requantization(
                                        deploy::requantization_from_string(requantization)))
                    .outputs;
    } else {
      const std::string onnx = output + ".qdq.onnx";
      deploy::export_qdq(*model.module, t, onnx);
      deploy::OrtOptions options;
      options.threads = threads;
      outputs = deploy::run_onnxruntime(onnx, {x}, options).outputs;
      std::filesystem::remove(onnx);
    }
  }
  TORCH_CHECK(!outputs.empty(), "infer: the model produced no output");
  const bool npz = output.size() > 4 && output.substr(output.size() - 4) == ".npz";
  if (npz) {
    // Every output, by the model's output names (ONNX graph outputs; "output" for the zoo).
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::string name =
          i < model.output_names.size() && outputs.size() == model.output_names.size()
              ? model.output_names[i]
              : "output" + std::to_string(i);
      named.emplace_back(name, outputs[i].to(at::kFloat));
    }
    util::write_npz(output, named);
  } else {
    util::write_npy(output, outputs[0].to(at::kFloat));
  }
  std::cout << "infer (" << engine << "): " << input << " " << x.sizes() << " -> " << output << " ("
            << outputs.size() << (npz ? " outputs" : " output, the first") << "; first "
            << outputs[0].sizes() << ")\n";
  return 0;
}

}  // namespace cli
}  // namespace calq
