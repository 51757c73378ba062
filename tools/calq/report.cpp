#include "report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "calq/fake_quantize.h"
#include "calq/observers/histogram_observer.h"
#include "calq/util/atomic_file.h"
#include "calq/workflow.h"

namespace calq {
namespace cli {
namespace {

struct Row {
  std::string stage, name;
  double top1;
  std::string time;
};

std::vector<Row> rows_of(const nlohmann::json& results) {
  std::vector<Row> rows;
  const double float_top1 = results.at("float").at("top1").get<double>();
  rows.push_back({"float", "float", float_top1,
                  fmt::format("{:.1f} s/epoch", results["float"].value("seconds_per_epoch", 0.0))});
  if (results.contains("calibration")) {
    for (const auto& item : results["calibration"].items()) {
      rows.push_back({"calibration", item.key(), item.value()["top1"].get<double>(),
                      fmt::format("{:.2f} s", item.value()["seconds"].get<double>())});
    }
  }
  if (results.contains("qat")) {
    for (const auto& item : results["qat"].items()) {
      rows.push_back(
          {"qat", item.key(), item.value()["top1"].get<double>(),
           fmt::format("{:.1f} s/epoch", item.value()["seconds_per_epoch"].get<double>())});
    }
  }
  return rows;
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

std::string escape_xml(const std::string& text) {
  std::string out;
  for (char ch : text) {
    if (ch == '<')
      out += "&lt;";
    else if (ch == '>')
      out += "&gt;";
    else if (ch == '&')
      out += "&amp;";
    else
      out += ch;
  }
  return out;
}

// Horizontal bars, one per result, with a dashed line at the float accuracy.
void write_accuracy_svg(const std::string& path,
                        const std::vector<std::pair<std::string, double>>& bars,
                        double float_top1) {
  double low = float_top1;
  for (const auto& bar : bars) low = std::min(low, bar.second);
  low = std::max(0.0, std::floor(low - 1.0));
  const double high = 100.0, left = 190, width = 420, row = 22;
  const double height = 40 + row * static_cast<double>(bars.size());
  auto x_of = [&](double v) { return left + width * (v - low) / (high - low); };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      left + width + 70, height);
  for (size_t i = 0; i < bars.size(); ++i) {
    const double y = 10 + row * static_cast<double>(i);
    svg += fmt::format(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n"
        "<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\" fill=\"#4878a8\"/>\n"
        "<text x=\"{:.1f}\" y=\"{}\">{:.2f}</text>\n",
        left - 6, y + 14, escape_xml(bars[i].first), left, y + 3,
        std::max(0.0, x_of(bars[i].second) - left), row - 6, x_of(bars[i].second) + 4, y + 14,
        bars[i].second);
  }
  svg += fmt::format(
      "<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"5\" y2=\"{1}\" stroke=\"#c03030\" "
      "stroke-dasharray=\"4 3\"/>\n<text x=\"{0:.1f}\" y=\"{2}\" fill=\"#c03030\" "
      "text-anchor=\"middle\">float {3:.2f}</text>\n"
      "<text x=\"{4}\" y=\"{2}\">top-1 % (axis from {5:.0f})</text>\n</svg>\n",
      x_of(float_top1), height - 20, height - 6, float_top1, left, low);
  util::write_file_atomic(path, svg);
}

// Log-count histogram of |x| with the clipping threshold t marked.
void write_histogram_svg(const std::string& path, const std::string& title,
                         const observers::AbsHistogram& h, double t) {
  const double left = 40, width = 480, top = 24, height = 160;
  // Group the bins into at most 240 columns so the picture stays small.
  const int64_t columns = std::min<int64_t>(240, h.bins());
  const int64_t per_column = (h.bins() + columns - 1) / columns;
  at::Tensor counts = h.counts.to(at::kDouble).contiguous();
  std::vector<double> column(static_cast<size_t>(columns), 0.0);
  for (int64_t b = 0; b < h.bins(); ++b) column[b / per_column] += counts[b].item<double>();
  const double peak = std::log10(1.0 + *std::max_element(column.begin(), column.end()));
  const double span = h.bin_width() * static_cast<double>(per_column * columns);
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"{}\" y=\"14\">{} "
      "(|x|, log count)</text>\n",
      left + width + 20, top + height + 30, left, escape_xml(title));
  const double bar_width = width / static_cast<double>(columns);
  for (int64_t i = 0; i < columns; ++i) {
    const double v = peak > 0 ? std::log10(1.0 + column[i]) / peak : 0.0;
    svg += fmt::format(
        "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" "
        "fill=\"#4878a8\"/>\n",
        left + bar_width * i, top + height * (1 - v), bar_width, height * v);
  }
  const double x_t = left + width * std::min(1.0, span > 0 ? t / span : 1.0);
  svg += fmt::format(
      "<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#c03030\"/>\n"
      "<text x=\"{0:.1f}\" y=\"{3}\" fill=\"#c03030\" text-anchor=\"middle\">t = "
      "{4:.4g}</text>\n<text x=\"{5}\" y=\"{3}\">0</text>\n<text x=\"{6}\" y=\"{3}\" "
      "text-anchor=\"end\">{7:.4g}</text>\n</svg>\n",
      x_t, top, top + height, top + height + 16, t, left, left + width, span);
  util::write_file_atomic(path, svg);
}

}  // namespace

std::string summary_table(const nlohmann::json& results) {
  const double float_top1 = results.at("float").at("top1").get<double>();
  std::string out =
      fmt::format("{:<12} {:<12} {:>8} {:>8}  {}\n", "stage", "name", "top-1 %", "delta", "time");
  for (const Row& row : rows_of(results)) {
    out += fmt::format("{:<12} {:<12} {:>8.2f} {:>+8.2f}  {}\n", row.stage, row.name, row.top1,
                       row.top1 - float_top1, row.time);
  }
  return out;
}

void write_report(const Workspace& ws, const nlohmann::json& results,
                  zoo::ClassifierImpl& float_model, zoo::ClassifierImpl& calibrated) {
  const RunConfig& c = ws.config;
  const double float_top1 = results.at("float").at("top1").get<double>();

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
  for (const Row& row : rows_of(results)) bars.emplace_back(row.stage + " " + row.name, row.top1);
  write_accuracy_svg(c.out + "/accuracy.svg", bars, float_top1);

  std::string md;
  md += fmt::format("# calq run: {} on Fashion-MNIST, W{}\n\n", c.model, c.bits);
  md += fmt::format(
      "{} training / {} test images, {} float epochs, {} QAT epochs, {} calibration batches "
      "of {}, seed {}, {} threads, march {}.\n\n",
      ws.train.size(), ws.test.size(), c.epochs, c.qat_epochs, c.calib_batches, c.batch_size,
      c.seed, results["config"].value("threads_used", c.threads), c.march);
  md += "| stage | name | top-1 % | vs float | time |\n|---|---|---:|---:|---|\n";
  for (const Row& row : rows_of(results)) {
    md += fmt::format("| {} | {} | {:.2f} | {:+.2f} | {} |\n", row.stage, row.name, row.top1,
                      row.top1 - float_top1, row.time);
  }
  md += fmt::format("\nBest calibration observer: **{}** (its model initialises QAT).\n\n",
                    results.value("best_observer", std::string("?")));
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
