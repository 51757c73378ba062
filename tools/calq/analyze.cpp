// calq analyze --checkpoint CALIBRATED [--json OUT.json] [--samples N] [--no-sensitivity]
// Per quantization point: its own and accumulated output error, weight / activation split,
// clipping, and the model's sensitivity to it (only it quantized, only it float), ranked;
// a markdown report with SVG charts in OUT/analysis/.
#include "analyze.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <iostream>
#include <sstream>

#include "calq/analysis/analyze.h"
#include "calq/analysis/report.h"
#include "calq/util/atomic_file.h"
#include "recipe_steps.h"
#include "steps.h"

namespace calq {
namespace cli {
namespace {

struct AnalyzeFlags {
  std::string checkpoint;
  std::string json_path;
  int64_t samples = 1024;
  bool no_sensitivity = false;
};

AnalyzeFlags& flags() {
  static AnalyzeFlags f;
  return f;
}

}  // namespace

CLI::App* add_analyze_command(CLI::App& app, const std::function<void(CLI::App&)>& add_common) {
  auto* sub = app.add_subcommand(
      "analyze", "per-layer error and sensitivity of a calibrated model, with a report");
  add_common(*sub);
  AnalyzeFlags& f = flags();
  sub->add_option("--checkpoint", f.checkpoint, "calibrated model file (calq calibrate / run)")
      ->required();
  sub->add_option("--json", f.json_path, "write the per-point figures here (JSON)");
  sub->add_option("--samples", f.samples,
                  "validation examples analysed (2N + 2 passes over them for N points)")
      ->capture_default_str();
  sub->add_flag("--no-sensitivity", f.no_sensitivity,
                "skip the 2N sensitivity passes (accumulated error only)");
  return sub;
}

int analyze_command(const RunConfig& config) {
  const AnalyzeFlags& f = flags();
  TORCH_CHECK(f.samples >= 1, "--samples must be >= 1, got ", f.samples);
  Workspace ws = open_workspace(config);
  ModelMeta meta;
  Model model = load_model(f.checkpoint, &meta);
  TORCH_CHECK(meta.prepared, "analyze: '", f.checkpoint,
              "' is a float model; analyze a calibrated one (calq calibrate)");
  check_workspace_fits(model, ws);
  // A bounded subset of the validation split (held out from training, never the test set).
  const std::vector<at::Tensor> batches = validation_images(ws, f.samples);
  const analysis::Analysis result =
      analysis::analyze(*model.module, model.forward, batches,
                        analysis::AnalyzeOptions().sensitivity(!f.no_sensitivity));

  std::cout << analysis::format_analysis_table(result);
  const std::vector<size_t> ranking = result.ranking();
  if (!ranking.empty()) {
    std::cout << "most sensitive first:";
    for (size_t i = 0; i < ranking.size() && i < 5; ++i) {
      std::cout << (i ? ", " : " ") << result.points[ranking[i]].name;
    }
    std::cout << "\n";
  }
  const std::string dir = config.out + "/analysis";
  std::ostringstream context;
  context << "`calq analyze --checkpoint " << f.checkpoint << "`: " << meta.model << ", W"
          << config.bits << " settings, " << result.samples
          << " validation examples (held out from training), " << at::get_num_threads()
          << " threads.";
  if (meta.steps.bias_correction()) {
    context << " The model was bias-corrected: its float reference (every quantizer FLOAT) "
               "has the corrected biases.";
  }
  analysis::write_analysis_report(result, dir, "calq analyze: " + f.checkpoint, context.str());
  nlohmann::json j = result.to_json();
  j["checkpoint"] = f.checkpoint;
  j["threads"] = at::get_num_threads();
  const std::string json_path = f.json_path.empty() ? dir + "/analysis.json" : f.json_path;
  util::write_file_atomic(json_path, j.dump(2) + "\n");
  std::cout << "report: " << dir << "/report.md, JSON: " << json_path << "\n";
  return 0;
}

}  // namespace cli
}  // namespace calq
