// calq run: the seed's eleven steps on the embedded default, for every observer and method.
#include <filesystem>
#include <iostream>

#include "calq/pipeline/training.h"
#include "calq/util/atomic_file.h"
#include "calq/util/timer.h"
#include "commands.h"
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
  previous_config.erase("threads_used");
  if (previous_config != config.to_json()) {
    std::cerr << "calq: --resume: " << path << " was written with other settings; starting over\n";
    return nlohmann::json::object();
  }
  return previous;
}

bool has(const nlohmann::json& j, const std::string& a, const std::string& b) {
  return j.contains(a) && j[a].contains(b);
}

}  // namespace

int run_command(const RunConfig& config) {
  util::Timer total;
  Workspace ws = open_workspace(config);
  std::cerr << "calq run: " << config.model << ", W" << config.bits << ", " << ws.train.size()
            << " training / " << ws.test.size() << " test images, " << at::get_num_threads()
            << " threads -> " << config.out << "\n";
  nlohmann::json results = previous_results(config);
  results["config"] = config.to_json();
  results["config"]["threads_used"] = at::get_num_threads();

  // Step 1: the float model.
  double float_seconds = 0.0;
  bool reused = false;
  zoo::Classifier float_net = float_model(ws, &float_seconds, &reused);
  if (!has(results, "float", "top1") || !reused) {
    results["float"] = {{"top1", pipeline::evaluate(*float_net, ws.test, false, 512, "eval float")},
                        {"seconds_per_epoch", float_seconds},
                        {"reused_checkpoint", reused}};
    save_results(config, results);
  }
  std::cerr << "float top-1 " << results["float"]["top1"].get<double>() << "%\n";

  // Steps 2-6 for every activation observer: prepare, calibrate, validate.
  const std::vector<at::Tensor> calibration = calibration_images(ws);
  std::string best;
  for (const std::string& observer : config.observers) {
    const std::string path = config.out + "/calibrated/" + observer + ".pt";
    if (!(has(results, "calibration", observer) && std::filesystem::exists(path))) {
      ModelMeta meta;
      zoo::Classifier model =
          prepare_from_float(config, *float_net, calibration_qconfig(config, observer), &meta);
      util::Timer timer;
      calibrate(model, calibration);
      const double seconds = timer.seconds();
      const double top1 = pipeline::evaluate(*model, ws.test, true, 512, "eval " + observer);
      save_model(*model, meta, path);
      results["calibration"][observer] = {{"top1", top1}, {"seconds", seconds}};
      save_results(config, results);
    }
    const double top1 = results["calibration"][observer]["top1"].get<double>();
    std::cerr << "calibration " << observer << ": top-1 " << top1 << "%\n";
    if (best.empty() || top1 > results["calibration"][best]["top1"].get<double>()) best = observer;
  }
  results["best_observer"] = best;
  zoo::Classifier calibrated = load_model(config.out + "/calibrated/" + best + ".pt");

  // Steps 7-11 for every method: fresh QAT model, load the best calibration, train, validate.
  for (const std::string& method : config.methods) {
    const std::string path = config.out + "/qat/" + method + ".pt";
    if (has(results, "qat", method) && std::filesystem::exists(path)) continue;
    ModelMeta meta;
    zoo::Classifier model =
        prepare_from_float(config, *float_net, qat_qconfig(config, method), &meta);
    const LoadReport report = load_observer_params(*calibrated, *model);
    auto trained = pipeline::train(*model, ws.train, qat_train_options(config, method));
    const double top1 = pipeline::evaluate(*model, ws.test, true, 512, "eval qat " + method);
    save_model(*model, meta, path);
    std::filesystem::remove(qat_resume_checkpoint(config, method));
    results["qat"][method] = {{"top1", top1},
                              {"seconds_per_epoch", trained.seconds_per_epoch},
                              {"loaded_entries", report.copied.size()},
                              {"missing_entries", report.missing.size()},
                              {"unexpected_entries", report.unexpected.size()}};
    save_results(config, results);
    std::cerr << "qat " << method << ": top-1 " << top1 << "%\n";
  }

  util::write_file_atomic(config.out + "/scales_calibrated_" + best + ".json",
                          export_scales(*calibrated).dump(2) + "\n");
  results["seconds_total"] = total.seconds();  // this invocation (a resumed run counts its part)
  save_results(config, results);
  write_report(ws, results, *float_net, *calibrated);
  std::cout << summary_table(results);
  std::cout << "results: " << config.out << "/results.json, report: " << config.out
            << "/report.md\n";
  return 0;
}

}  // namespace cli
}  // namespace calq
