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
std::map<std::string, double> thresholds(zoo::ClassifierImpl& model) {
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

void write_report(const Workspace& ws, const nlohmann::json& results,
                  zoo::ClassifierImpl& float_model, zoo::ClassifierImpl& calibrated) {
  const RunConfig& c = ws.config;
  const double float_top1 = results.at("float").at("val_top1").get<double>();

  // Per-layer histograms of the calibration data, with the best observer's range.
  zoo::Classifier histogram_model =
      prepare_from_float(c, float_model, calibration_qconfig(c, "percentile"), nullptr);
  calibrate(histogram_model, calibration_images(ws));
  const auto chosen = thresholds(calibrated);
  std::string histogram_section;
  for (const auto& item : histogram_model->named_modules()) {
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
  md += fmt::format("# calq run: {} on Fashion-MNIST, W{}\n\n", c.model, c.bits);
  md += fmt::format(
      "{} training / {} validation (held out from training) / {} test images, {} float epochs, "
      "{} QAT epochs, {} calibration batches of {}, seed {}, {} threads, march {}.\n\n",
      ws.train.size(), ws.validation.size(), ws.test.size(), c.epochs, c.qat_epochs,
      c.calib_batches, c.batch_size, c.seed, results["config"].value("threads_used", c.threads),
      c.march);
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
