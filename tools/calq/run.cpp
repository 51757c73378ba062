// calq run: the seed's eleven steps on the embedded default or a user's ONNX model and data, for
// every observer and method, then deployment. Every choice (the best observer, the best method)
// is made on the validation split held out from the training data; the test set only measures
// what was chosen, with paired confidence intervals for every difference the report names.
#include <filesystem>
#include <iostream>

#include "auto_calibration.h"
#include "calq/pipeline/statistics.h"
#include "calq/pipeline/training.h"
#include "calq/util/atomic_file.h"
#include "calq/util/timer.h"
#include "commands.h"
#include "deploy_step.h"
#include "recipe_steps.h"
#include "report.h"
#include "steps.h"

namespace calq {
namespace cli {
namespace {

void save_results(const RunConfig& config, const nlohmann::json& results) {
  util::write_file_atomic(config.out + "/results.json", results.dump(2) + "\n");
}

// Results of an earlier, interrupted run with the same settings (for --resume), else empty.
nlohmann::json previous_results(const RunConfig& config) {
  const std::string path = config.out + "/results.json";
  if (!config.resume || !std::filesystem::exists(path)) return nlohmann::json::object();
  nlohmann::json previous = read_json_file(path);
  nlohmann::json previous_config = previous.value("config", nlohmann::json::object());
  nlohmann::json current_config = config.to_json();
  // A setting newer than the earlier run, at its default, is what that run used.
  const nlohmann::json defaults = RunConfig().to_json();
  const nlohmann::json current_settings = current_config;
  for (const auto& item : current_settings.items()) {
    if (!previous_config.contains(item.key()) && defaults.contains(item.key()) &&
        defaults[item.key()] == item.value()) {
      current_config.erase(item.key());
    }
  }
  // How the work is spread (threads, processes) does not change the results' meaning.
  for (const char* key : {"threads_used", "processes_used", "nproc", "dist_timeout"}) {
    previous_config.erase(key);
    current_config.erase(key);
  }
  if (previous_config != current_config) {
    std::cerr << "calq: --resume: " << path << " was written with other settings; starting over\n";
    return nlohmann::json::object();
  }
  return previous;
}

bool has(const nlohmann::json& j, const std::string& a, const std::string& b) {
  return j.contains(a) && j[a].contains(b);
}

// Rank 0's answer on every rank of a job (so that all ranks take the same branch, whatever
// their view of the files); `answer` in one process.
bool rank0_decides(const Workspace& ws, bool answer) {
  if (!ws.group) return answer;
  return !ws.group->broadcast_bytes(answer ? "1" : "").empty();
}

nlohmann::json comparison_json(const pipeline::PairedComparison& c) {
  return {{"diff_pt", c.diff_pt},  {"ci_low_pt", c.ci_low_pt}, {"ci_high_pt", c.ci_high_pt},
          {"p_value", c.p_value},  {"a_only", c.a_only},       {"b_only", c.b_only},
          {"verdict", c.verdict()}};
}

// The name with the highest validation top-1 (the first on ties) among `stage`'s entries.
std::string best_by_validation(const nlohmann::json& results, const std::string& stage,
                               const std::vector<std::string>& names) {
  std::string best;
  for (const std::string& name : names) {
    if (best.empty() || results[stage][name]["val_top1"].get<double>() >
                            results[stage][best]["val_top1"].get<double>()) {
      best = name;
    }
  }
  return best;
}

}  // namespace

int run_command(const RunConfig& config) {
  util::Timer total;
  Workspace ws = open_workspace(config);
  const bool writer = ws.writer();
  // Only rank 0 writes results; the other ranks compute the same (shared) steps.
  auto save = [&](const nlohmann::json& results) {
    if (writer) save_results(config, results);
  };
  if (writer) {
    std::cerr << "calq run: " << config.model << ", W" << config.bits << ", " << ws.train->size()
              << " training / " << ws.validation->size() << " validation / "
              << (ws.test ? ws.test->size() : 0) << " test examples"
              << (ws.labelled ? "" : " (no labels: agreement with the float model)") << ", "
              << at::get_num_threads() << " threads"
              << (ws.group ? " x " + std::to_string(ws.group->size()) + " processes" : "") << " -> "
              << config.out << "\n";
  }
  nlohmann::json results = previous_results(config);
  results["config"] = config.to_json();
  results["config"]["threads_used"] = at::get_num_threads();
  results["config"]["processes_used"] = ws.group ? ws.group->size() : 1;
  results["data"] = ws.describe();
  results["data"]["train"] = ws.train->size();
  results["data"]["validation"] = ws.validation->size();
  results["data"]["test"] = ws.test ? ws.test->size() : 0;
  results["data"]["source"] = ws.train->describe();

  // Step 1: the float model (trained for the zoo; the user's model as it is).
  double float_seconds = 0.0;
  bool reused = false;
  Model float_net = float_model(ws, &float_seconds, &reused);
  const pipeline::Forward reference = float_net.forward;
  const pipeline::Forward* against = ws.labelled ? nullptr : &reference;
  auto evaluate = [&](Model& model, const data::SourcePtr& data, bool quantized,
                      const std::string& label) {
    if (quantized) use_arithmetic(ws.config, model);
    return pipeline::evaluate_each(*model.module, model.forward, data, quantized, against, 512,
                                   label, ws.group);
  };
  if (rank0_decides(ws, !has(results, "float", "val_top1") || !reused)) {
    results["float"] = {{"val_top1", evaluate(float_net, ws.validation, false, "val float").top1},
                        {"seconds_per_epoch", float_seconds},
                        {"reused_checkpoint", reused}};
    save(results);
  }

  // Steps 2-6 for every activation observer: prepare, calibrate, validate on held-out data.
  for (const std::string& observer : config.observers) {
    const std::string path = config.out + "/calibrated/" + observer + ".pt";
    if (rank0_decides(ws, has(results, "calibration", observer) && std::filesystem::exists(path)))
      continue;
    ModelMeta meta;
    Model model;
    nlohmann::json search;
    util::Timer timer;
    if (observer == "auto") {
      // Chooses on the validation split by top-1 (agreement without labels), like every other
      // choice of calq run, so it cannot end below the best single observer there (each is
      // one of its candidates).
      AutoCalibration chosen = auto_calibrate(ws, float_net, /*labelled=*/true);
      std::cerr << chosen.result.summary();
      model = chosen.model;
      meta = chosen.meta;
      analysis::save_recipe(chosen.result.recipe, config.out + "/calibrated/auto.recipe.json");
      search = chosen.result.to_json();
      search.erase("recipe");
      search["recipe_file"] = config.out + "/calibrated/auto.recipe.json";
    } else {
      const analysis::Recipe recipe = calibration_recipe(config, observer);
      model = prepare_from_float(config, float_net, recipe, &meta);
      if (recipe.steps.cross_layer_equalization() || recipe.steps.bias_correction()) {
        calibrate_with_recipe(ws, model, recipe);
      } else {
        calibrate_model(ws, model);
      }
    }
    const double seconds = timer.seconds();
    const double top1 = evaluate(model, ws.validation, true, "val " + observer).top1;
    if (writer) save_model(model, meta, path);
    results["calibration"][observer] = {{"val_top1", top1},
                                        {"seconds", seconds},
                                        {"clamped_scales", clamped_scales(*model.module)}};
    if (!search.is_null()) results["calibration"][observer]["auto"] = search;
    save(results);
    if (writer) std::cerr << "calibration " << observer << ": validation top-1 " << top1 << "%\n";
  }
  const std::string best = best_by_validation(results, "calibration", config.observers);
  results["best_observer"] = best;
  ws.sync();  // rank 0 wrote the calibrated models
  ModelMeta calibrated_meta;
  Model calibrated = load_model(config.out + "/calibrated/" + best + ".pt", &calibrated_meta);

  // Steps 7-11 for every method: fresh QAT model, load the best calibration, train (labels, or
  // distillation from the float model), validate.
  for (const std::string& method : config.qat_methods()) {
    const std::string path = config.out + "/qat/" + method + ".pt";
    if (rank0_decides(ws, has(results, "qat", method) && std::filesystem::exists(path))) continue;
    ModelMeta meta;
    // The calibration's per-layer grids (auto's, unsigned ones) switched to the QAT method.
    analysis::Recipe recipe = calibrated_meta.recipe().for_qat(
        method, method == "lsq" ? "lsq" : "fake_quant",
        config.qat_observer == "calibrated" ? "" : config.qat_observer);
    recipe.global = qat_qconfig(config, method, calibrated_meta.qconfig.activation->observer);
    Model model = prepare_from_float(config, float_net, recipe, &meta);
    copy_float_state(*calibrated.module, *model.module);  // equalized / corrected weights
    const LoadReport report = load_observer_params(*calibrated.module, *model.module);
    TORCH_CHECK(report.ok(), "qat ", method,
                ": the calibration does not fit the QAT model: ", report.str());
    float_net.module->eval();
    auto trained = pipeline::train(*model.module, model.forward, ws.train,
                                   qat_train_options(config, method).process_group(ws.group),
                                   config.distills(ws.labelled) ? &reference : nullptr);
    const double top1 = evaluate(model, ws.validation, true, "val qat " + method).top1;
    if (writer) {
      save_model(model, meta, path);
      std::filesystem::remove(qat_resume_checkpoint(config, method));
    }
    results["qat"][method] = {
        {"val_top1", top1},
        {"seconds_per_epoch", trained.seconds_per_epoch},
        {"loss", config.distills(ws.labelled) ? "distillation" : "cross_entropy"},
        {"load",
         {{"copied_entries", report.copied.size()},
          {"converted", report.converted},
          {"not_applicable_entries", report.not_applicable.size()}}},
        {"clamped_scales", clamped_scales(*model.module)}};
    save(results);
    if (writer) std::cerr << "qat " << method << ": validation top-1 " << top1 << "%\n";
  }
  if (!config.qat_methods().empty()) {
    results["best_method"] = best_by_validation(results, "qat", config.qat_methods());
  }
  ws.sync();  // rank 0 wrote the QAT models

  // The test set, once, for the float model and what was chosen or trained: top-1 and paired
  // comparisons on the same examples.
  if (ws.test) {
    const pipeline::Evaluation float_test = evaluate(float_net, ws.test, false, "test float");
    results["float"]["test_top1"] = float_test.top1;
    const pipeline::Evaluation calibrated_test =
        evaluate(calibrated, ws.test, true, "test " + best);
    results["chosen_calibration"] = {
        {"observer", best},
        {"test_top1", calibrated_test.top1},
        {"vs_float",
         comparison_json(pipeline::compare_paired(float_test.correct, calibrated_test.correct))}};
    for (const std::string& method : config.qat_methods()) {
      Model model = load_model(config.out + "/qat/" + method + ".pt");
      const pipeline::Evaluation test = evaluate(model, ws.test, true, "test qat " + method);
      results["qat"][method]["test_top1"] = test.top1;
      results["qat"][method]["vs_float"] =
          comparison_json(pipeline::compare_paired(float_test.correct, test.correct));
      results["qat"][method]["vs_calibration"] =
          comparison_json(pipeline::compare_paired(calibrated_test.correct, test.correct));
    }
  }
  // The rest (deployment check, exports, report) runs on rank 0 alone, outside the job: its
  // steps (the report's histogram calibration) must not wait for ranks that have finished.
  if (!writer) return 0;
  Workspace solo = ws;
  solo.group = nullptr;
  save_results(config, results);

  // Deployment: the chosen calibration and every QAT model as QDQ ONNX, run by ONNX Runtime and
  // the integer engine.
  {
    nlohmann::json runtime;
    results["deploy"]["calibrated_" + best] = deploy_and_check(
        solo, calibrated, float_net, config.out + "/deploy/calibrated_" + best + ".onnx", &runtime);
    for (const std::string& method : config.qat_methods()) {
      const Model model = load_model(config.out + "/qat/" + method + ".pt");
      results["deploy"]["qat_" + method] = deploy_and_check(
          solo, model, float_net, config.out + "/deploy/qat_" + method + ".onnx", &runtime);
    }
    results["deploy_runtime"] = runtime;
    save_results(config, results);
  }

  util::write_file_atomic(config.out + "/scales_calibrated_" + best + ".json",
                          export_scales(*calibrated.module).dump(2) + "\n");
  results["seconds_total"] = total.seconds();  // this invocation (a resumed run counts its part)
  save_results(config, results);
  write_report(solo, results, float_net, calibrated);
  std::cout << summary_table(results);
  std::cout << "results: " << config.out << "/results.json, report: " << config.out
            << "/report.md\n";
  return 0;
}

}  // namespace cli
}  // namespace calq
