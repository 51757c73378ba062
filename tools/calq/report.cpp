#include "report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "calq/fake_quantize.h"
#include "calq/observers/histogram_observer.h"
#include "calq/util/atomic_file.h"
#include "calq/util/svg.h"
#include "calq/workflow.h"

namespace calq {
namespace cli {
namespace {

struct Row {
  std::string stage, name;
  double val_top1;
  c10::optional<double> test_top1;
  std::string vs_float;  ///< paired difference on the test set, "" when not measured
  std::string time;
};

std::string paired(const nlohmann::json& comparison) {
  return fmt::format("{:+.2f} [{:+.2f}, {:+.2f}] {}", comparison["diff_pt"].get<double>(),
                     comparison["ci_low_pt"].get<double>(), comparison["ci_high_pt"].get<double>(),
                     comparison["verdict"].get<std::string>());
}

std::vector<Row> rows_of(const nlohmann::json& results) {
  std::vector<Row> rows;
  const nlohmann::json& f = results.at("float");
  Row float_row{"float", "float", f.at("val_top1").get<double>(), c10::nullopt, "", ""};
  if (f.contains("test_top1")) float_row.test_top1 = f["test_top1"].get<double>();
  float_row.time = f.value("reused_checkpoint", false)
                       ? "reused"
                       : fmt::format("{:.1f} s/epoch", f.value("seconds_per_epoch", 0.0));
  rows.push_back(float_row);
  const std::string chosen = results.value("best_observer", std::string());
  if (results.contains("calibration")) {
    for (const auto& item : results["calibration"].items()) {
      Row row{"calibration",
              item.key(),
              item.value()["val_top1"].get<double>(),
              c10::nullopt,
              "",
              fmt::format("{:.2f} s", item.value()["seconds"].get<double>())};
      if (item.key() == chosen && results.contains("chosen_calibration")) {
        row.name += " (chosen)";
        row.test_top1 = results["chosen_calibration"]["test_top1"].get<double>();
        row.vs_float = paired(results["chosen_calibration"]["vs_float"]);
      }
      rows.push_back(row);
    }
  }
  if (results.contains("qat")) {
    for (const auto& item : results["qat"].items()) {
      Row row{"qat",
              item.key(),
              item.value()["val_top1"].get<double>(),
              c10::nullopt,
              "",
              fmt::format("{:.1f} s/epoch", item.value()["seconds_per_epoch"].get<double>())};
      if (item.value().contains("test_top1")) {
        row.test_top1 = item.value()["test_top1"].get<double>();
        row.vs_float = paired(item.value()["vs_float"]);
      }
      rows.push_back(row);
    }
  }
  return rows;
}

std::string test_cell(const Row& row) {
  return row.test_top1 ? fmt::format("{:.2f}", *row.test_top1) : std::string("-");
}

// The per-layer clipping threshold t of a symmetric quantizer: the real value of quant_max.
std::map<std::string, double> thresholds(torch::nn::Module& model) {
  std::map<std::string, double> out;
  for (const auto& item : model.named_modules()) {
    auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get());
    if (fq == nullptr || item.key().find("output_fake_quant") == std::string::npos) continue;
    out[item.key()] = fq->scale().max().item<double>() * fq->spec().quant_max();
  }
  return out;
}

// Horizontal bars, one per result, zoomed on the accuracy range of interest.
void write_accuracy_svg(const std::string& path,
                        const std::vector<std::pair<std::string, double>>& bars,
                        double float_top1) {
  util::BarChart chart;
  chart.title = "top-1 accuracy per observer and method";
  util::BarSeries series{"top-1", {}};
  double low = float_top1;
  for (const auto& bar : bars) {
    chart.categories.push_back(bar.first);
    series.values.push_back(bar.second);
    low = std::min(low, bar.second);
  }
  chart.series.push_back(series);
  chart.value_min = std::max(0.0, std::floor(low - 1.0));
  chart.value_max = 100.0;
  util::save_svg(path, util::render_bar_chart(chart));
}

// Log-count histogram of |x| with the clipping threshold t marked.
void write_histogram_svg(const std::string& path, const std::string& title,
                         const observers::AbsHistogram& h, double t) {
  util::HistogramPlot plot;
  plot.title = title + ": |x| on the calibration batches";
  plot.x_label = "|x|";
  at::Tensor counts = h.counts.to(at::kDouble).contiguous();
  plot.counts.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + counts.numel());
  plot.lo = 0.0;
  plot.hi = h.range;
  plot.log_y = true;
  plot.markers.push_back({t, "t"});
  util::save_svg(path, util::render_histogram(plot));
}

}  // namespace

std::string summary_table(const nlohmann::json& results) {
  std::string out = fmt::format("{:<12} {:<20} {:>8} {:>8}  {:<40} {}\n", "stage", "name", "val %",
                                "test %", "test vs float (paired 95% CI)", "time");
  for (const Row& row : rows_of(results)) {
    out += fmt::format("{:<12} {:<20} {:>8.2f} {:>8}  {:<40} {}\n", row.stage, row.name,
                       row.val_top1, test_cell(row), row.vs_float, row.time);
  }
  return out;
}

void write_report(const Workspace& ws, const nlohmann::json& results, const Model& float_model,
                  const Model& calibrated) {
  const RunConfig& c = ws.config;
  const double float_top1 = results.at("float").at("val_top1").get<double>();

  // Per-layer histograms of the calibration data, with the best observer's range.
  Model histogram_model =
      prepare_from_float(c, float_model, calibration_qconfig(c, "percentile"), nullptr);
  calibrate_model(ws, histogram_model);
  const auto chosen = thresholds(*calibrated.module);
  std::string histogram_section;
  for (const auto& item : histogram_model.module->named_modules()) {
    auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get());
    if (fq == nullptr || chosen.count(item.key()) == 0) continue;
    auto* observer = dynamic_cast<observers::HistogramObserverImpl*>(&fq->observer());
    if (observer == nullptr || !observer->has_data()) continue;
    const observers::AbsHistogram h = observer->histogram();
    const double t = chosen.at(item.key());
    const double clipped = [&] {
      at::Tensor counts = h.counts;
      const int64_t first_clipped =
          std::min<int64_t>(h.bins(), static_cast<int64_t>(std::ceil(t / h.bin_width())));
      return counts.narrow(0, first_clipped, h.bins() - first_clipped).sum().item<double>();
    }();
    const std::string layer = item.key().substr(0, item.key().find(".output_fake_quant"));
    const std::string file = "histograms/" + layer + ".svg";
    write_histogram_svg(c.out + "/" + file, layer, h, t);
    histogram_section +=
        fmt::format("| `{}` | {:.4g} | {:.4g} | {:.4f} % | ![{}]({}) |\n", layer, h.max_abs, t,
                    100.0 * clipped / std::max(h.total(), 1.0), layer, file);
  }

  std::vector<std::pair<std::string, double>> bars;
  for (const Row& row : rows_of(results)) {
    bars.emplace_back(row.stage + " " + row.name, row.val_top1);
  }
  write_accuracy_svg(c.out + "/accuracy.svg", bars, float_top1);

  std::string md;
  md += fmt::format("# calq run: {} on {}, W{}\n\n", c.model,
                    c.data.empty() ? std::string("Fashion-MNIST") : c.data, c.bits);
  md += fmt::format(
      "{} training / {} validation (held out from training) / {} test examples, {} float "
      "epochs, {} QAT epochs, {} calibration batches of {}, seed {}, {} threads, march {}.\n\n",
      ws.train->size(), ws.validation->size(), ws.test ? ws.test->size() : 0, c.epochs,
      c.qat_epochs, c.calib_batches, c.batch_size, c.seed,
      results["config"].value("threads_used", c.threads), c.march);
  if (!ws.labelled) {
    md +=
        "The data has no labels: \"top-1\" is agreement with the float model's top-1, and "
        "QAT distills from the float model (KL divergence on its logits).\n\n";
  }
  md +=
      "Every choice is made on the validation split; the test set measures only the float "
      "model, the chosen calibration and the QAT models. \"test vs float\" is the paired "
      "difference on the same test images with its 95 % confidence interval (and McNemar's "
      "verdict: better / worse only when the interval excludes 0).\n\n";
  md +=
      "| stage | name | validation top-1 % | test top-1 % | test vs float (pt, 95 % CI) | time "
      "|\n|---|---|---:|---:|---|---|\n";
  for (const Row& row : rows_of(results)) {
    md += fmt::format("| {} | {} | {:.2f} | {} | {} | {} |\n", row.stage, row.name, row.val_top1,
                      test_cell(row), row.vs_float, row.time);
  }
  md += fmt::format(
      "\nBest calibration observer (validation): **{}** (its model initialises QAT); best QAT "
      "method (validation): **{}**.\n\n",
      results.value("best_observer", std::string("?")),
      results.value("best_method", std::string("?")));
  if (results.contains("qat")) {
    md += "| QAT method | test vs chosen calibration (pt, 95 % CI) |\n|---|---|\n";
    for (const auto& item : results["qat"].items()) {
      if (!item.value().contains("vs_calibration")) continue;
      md += fmt::format("| {} | {} |\n", item.key(), paired(item.value()["vs_calibration"]));
    }
    md += "\n";
  }
  md += "![accuracy per observer and method](accuracy.svg)\n\n";
  if (results.contains("deploy")) {
    md += "## Deployment\n\n";
    // Null when no model exported (nothing reached ONNX Runtime).
    const nlohmann::json runtime =
        results.value("deploy_runtime", nlohmann::json::object()).is_object()
            ? results["deploy_runtime"]
            : nlohmann::json::object();
    md += fmt::format(
        "Every model exported as QDQ ONNX (`deploy/NAME.onnx`) and run by ONNX Runtime {} on "
        "its integer kernels ({}), and by calq's integer engine. Top-1 on the {} set. The "
        "simulation is calq's VALIDATION in ONNX Runtime's integer arithmetic (`--arithmetic "
        "ort-cpu`: exact integer accumulation, the runtime's requantization), which computes "
        "what the runtime computes; the float simulation (what calibration and QAT ranked "
        "by) differs from it where a value lies near a rounding boundary. Agreement: the "
        "deployed model's top-1 equals the simulation's; LSB: the largest difference between "
        "simulated and deployed outputs in steps of the output grid (the accumulator step "
        "s_x s_w for a float output layer, where one LSB of difference in the layer's int8 "
        "input moves an output by up to the sum of |w_int| over the reduction).\n\n",
        runtime.value("onnxruntime", std::string("?")), runtime.value("cpu", std::string("?")),
        runtime.value("set", std::string("test")));
    md +=
        "| model | simulated top-1 (integer arithmetic) | ONNX Runtime top-1 | integer engine "
        "top-1 | argmax agreement (ORT) | max LSB diff (ORT) | float simulation top-1 | its "
        "argmax agreement (ORT) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    auto number = [](const nlohmann::json& d, const char* key, double factor, const char* unit) {
      return d.contains(key) && d[key].is_number()
                 ? fmt::format("{:.{}f}{}", d[key].get<double>() * factor, factor == 1.0 ? 2 : 3,
                               unit)
                 : std::string("-");
    };
    for (const auto& item : results["deploy"].items()) {
      const auto& d = item.value();
      if (d.contains("export_error")) {
        md += fmt::format("| {} | export failed: {} | | | | | | |\n", item.key(),
                          d["export_error"].get<std::string>());
        continue;
      }
      const nlohmann::json float_sim = d.value("float_sim", nlohmann::json::object());
      md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} |\n", item.key(),
                        number(d, "sim_top1", 1.0, ""), number(d, "ort_top1", 1.0, ""),
                        number(d, "int_top1", 1.0, ""), number(d, "argmax_agree", 100.0, " %"),
                        number(d, "max_lsb_diff", 1.0, ""), number(float_sim, "top1", 1.0, ""),
                        number(float_sim, "argmax_agree", 100.0, " %"));
    }
    md += "\n";
  }
  md += "## Activation histograms\n\n";
  md += fmt::format(
      "abs(x) of every quantized activation on the calibration batches (log counts), with "
      "the clipping threshold t of the best observer ({}): values above t saturate.\n\n",
      results.value("best_observer", std::string("?")));
  md += "| layer | max abs | t | clipped | histogram |\n|---|---:|---:|---:|---|\n";
  md += histogram_section;
  util::write_file_atomic(c.out + "/report.md", md);
}

}  // namespace cli
}  // namespace calq
