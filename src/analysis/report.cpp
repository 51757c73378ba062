#include "calq/analysis/report.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <sstream>

#include "calq/util/atomic_file.h"
#include "calq/util/svg.h"

namespace calq {
namespace analysis {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// "inf" for an exact match, "-" for a figure that was not measured.
std::string fixed(double v, int decimals, bool measured = true) {
  if (!measured) return "-";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  std::ostringstream out;
  out << std::fixed << std::setprecision(decimals) << v;
  return out.str();
}

std::string general(double v, bool measured = true) {
  if (!measured) return "-";
  std::ostringstream out;
  out << std::setprecision(4) << v;
  return out.str();
}

std::string pad(const std::string& s, size_t width, bool right = false) {
  if (s.size() >= width) return s;
  return right ? std::string(width - s.size(), ' ') + s : s + std::string(width - s.size(), ' ');
}

// A file name for a module path ("layer1.conv2" -> "layer1.conv2.svg"; "" -> "model.svg").
std::string file_stem(const std::string& name) {
  std::string out = name.empty() ? "model" : name;
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  }
  return out;
}

std::string display(const std::string& name) {
  return name.empty() ? "(model)" : name;
}

// The sensitivity figure shown: KL for classifiers, SQNR otherwise.
std::string sensitivity_cell(const OutputDivergence& d, bool measured) {
  if (!measured) return "-";
  if (d.classifier) return general(d.kl);
  return fixed(d.sqnr_db, 1) + " dB";
}

}  // namespace

std::string format_analysis_table(const Analysis& a) {
  const bool sensitivity = !a.ranking().empty();
  const bool classifier = a.all_quantized.classifier;
  size_t name_width = 5, type_width = 4;
  for (const auto& p : a.points) {
    name_width = std::max(name_width, display(p.name).size());
    type_width = std::max(type_width, p.type.size());
  }
  std::ostringstream out;
  out << pad("point", name_width) << "  " << pad("type", type_width) << "  "
      << pad("own dB", 8, true) << pad("acc dB", 8, true) << pad("cos", 9, true)
      << pad("max err", 10, true) << pad("clip %", 8, true) << pad("w dB", 8, true)
      << pad(classifier ? "sens KL" : "sens dB", 11, true)
      << pad(classifier ? "top1 %" : "", 8, true) << pad("rank", 6, true) << "\n";
  for (const auto& p : a.points) {
    const bool own = p.own.count > 0;
    out << pad(display(p.name), name_width) << "  " << pad(p.type, type_width) << "  "
        << pad(fixed(p.own.sqnr_db, 1, own), 8, true)
        << pad(fixed(p.accumulated.sqnr_db, 1, p.accumulated.count > 0), 8, true)
        << pad(fixed(own ? p.own.cosine : p.accumulated.cosine, 5), 9, true)
        << pad(general(own ? p.own.max_abs_err : p.accumulated.max_abs_err), 10, true)
        << pad(fixed(p.clipped_pct, 3, !p.output_spec.empty()), 8, true)
        << pad(fixed(p.weight.sqnr_db, 1, p.weight.count > 0), 8, true)
        << pad(sensitivity_cell(p.only_quantized, sensitivity), 11, true)
        << pad(classifier ? fixed(p.only_quantized.disagreement_pct(), 2, sensitivity) : "", 8,
               true)
        << pad(sensitivity ? std::to_string(p.sensitivity_rank) : "-", 6, true) << "\n";
  }
  out << "model, every point quantized: ";
  if (classifier) {
    out << "top-1 agreement " << fixed(a.all_quantized.top1_agreement, 2) << " %, KL "
        << general(a.all_quantized.kl) << ", ";
  }
  out << "output SQNR " << fixed(a.all_quantized.sqnr_db, 1) << " dB\n";
  out << "cost: " << a.passes << " passes over " << a.samples << " samples (" << a.batches
      << " batches) for " << a.points.size() << " points, " << fixed(a.seconds, 2) << " s\n";
  return out.str();
}

void write_analysis_report(const Analysis& a, const std::string& dir, const std::string& title,
                           const std::string& context) {
  std::filesystem::create_directories(dir + "/histograms");
  const bool sensitivity = !a.ranking().empty();
  const bool classifier = a.all_quantized.classifier;

  // Per-point SQNR: own error (only this point quantized) and accumulated (all quantized).
  util::BarChart sqnr;
  sqnr.title = "output SQNR per quantization point (higher is better)";
  sqnr.value_label = "SQNR (dB)";
  sqnr.decimals = 1;
  util::BarSeries own{"only this point quantized", {}}, acc{"every point quantized", {}};
  double top = 0.0;
  for (const auto& p : a.points) {
    sqnr.categories.push_back(display(p.name));
    own.values.push_back(p.own.count > 0 && std::isfinite(p.own.sqnr_db) ? p.own.sqnr_db : kNaN);
    acc.values.push_back(std::isfinite(p.accumulated.sqnr_db) ? p.accumulated.sqnr_db : kNaN);
    for (double v : {own.values.back(), acc.values.back()}) {
      if (std::isfinite(v)) top = std::max(top, v);
    }
  }
  if (sensitivity) sqnr.series.push_back(own);
  sqnr.series.push_back(acc);
  sqnr.value_min = 0.0;
  sqnr.value_max = std::max(10.0, std::ceil(top / 10.0) * 10.0);
  util::save_svg(dir + "/sqnr.svg", util::render_bar_chart(sqnr));

  std::ostringstream md;
  md << "# " << title << "\n\n";
  if (!context.empty()) md << context << "\n\n";
  md << "Every point quantized: ";
  if (classifier) {
    md << "top-1 agreement with the float model " << fixed(a.all_quantized.top1_agreement, 2)
       << " %, KL " << general(a.all_quantized.kl) << " nats, ";
  }
  md << "output SQNR " << fixed(a.all_quantized.sqnr_db, 1) << " dB, on " << a.samples
     << " samples. Cost: " << a.passes << " passes"
     << (sensitivity ? " (2N + 2 for N = " + std::to_string(a.points.size()) + " points)" : "")
     << ", " << fixed(a.seconds, 2) << " s.\n\n";

  if (sensitivity) {
    util::BarChart sens;
    sens.title = classifier ? "sensitivity: output KL with only this point quantized"
                            : "sensitivity: output noise-to-signal with only this point quantized";
    sens.value_label = classifier ? "KL (nats)" : "noise / signal";
    sens.decimals = 5;
    util::BarSeries s{classifier ? "KL" : "noise / signal", {}};
    double high = 0.0;
    for (size_t i : a.ranking()) {
      sens.categories.push_back(display(a.points[i].name));
      const double d = a.points[i].only_quantized.divergence();
      s.values.push_back(std::isfinite(d) ? d : kNaN);
      if (std::isfinite(d)) high = std::max(high, d);
    }
    sens.series.push_back(s);
    sens.value_min = 0.0;
    sens.value_max = high > 0.0 ? high * 1.1 : 1.0;
    util::save_svg(dir + "/sensitivity.svg", util::render_bar_chart(sens));

    md << "## Sensitivity ranking\n\n"
       << "Divergence of the model output from the float model with only this point quantized "
          "(its own damage), and with every point quantized except this one (what keeping it "
          "float would recover). "
       << (classifier ? "KL on the logits (nats); top-1 is the label-free disagreement with "
                        "the float model (a small subset makes it noisy at 8 bits)."
                      : "Output SQNR in dB.")
       << "\n\n";
    md << "| rank | point | type | only this quantized | "
       << (classifier ? "top-1 disagreement % | " : "") << "all but this quantized | "
       << (classifier ? "top-1 disagreement % |" : "") << "\n|---:|---|---|---:|"
       << (classifier ? "---:|" : "") << "---:|" << (classifier ? "---:|" : "") << "\n";
    for (size_t i : a.ranking()) {
      const PointAnalysis& p = a.points[i];
      md << "| " << p.sensitivity_rank << " | `" << display(p.name) << "` | " << p.type << " | "
         << sensitivity_cell(p.only_quantized, true) << " | ";
      if (classifier) md << fixed(p.only_quantized.disagreement_pct(), 2) << " | ";
      md << sensitivity_cell(p.only_float, true) << " | ";
      if (classifier) md << fixed(p.only_float.disagreement_pct(), 2) << " |";
      md << "\n";
    }
    md << "\n![sensitivity](sensitivity.svg)\n\n";
  }

  md << "## Per point\n\n"
     << "Output SQNR (dB) against the same point of the float model on the same inputs: "
        "*own* with only this point quantized, *accumulated* with every point quantized; "
        "*weight* / *activation* split the own error at the output quantizer; *weight dB* "
        "compares the quantized weight with the float (BN-folded) weight.\n\n"
     << "| point | type | own dB | accumulated dB | weight only dB | activation only dB | "
        "cosine | max abs err | clipped % | weight dB | weight clipped % | grid |\n"
     << "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const auto& p : a.points) {
    md << "| `" << display(p.name) << "` | " << p.type << " | "
       << fixed(p.own.sqnr_db, 1, p.own.count > 0) << " | "
       << fixed(p.accumulated.sqnr_db, 1, p.accumulated.count > 0) << " | "
       << fixed(p.weight_only.sqnr_db, 1, p.weight_only.count > 0) << " | "
       << fixed(p.activation_only.sqnr_db, 1, p.activation_only.count > 0) << " | "
       << fixed(p.own.count > 0 ? p.own.cosine : p.accumulated.cosine, 5) << " | "
       << general(p.own.count > 0 ? p.own.max_abs_err : p.accumulated.max_abs_err) << " | "
       << fixed(p.clipped_pct, 4, !p.output_spec.empty()) << " | "
       << fixed(p.weight.sqnr_db, 1, p.weight.count > 0) << " | "
       << fixed(p.weight_clipped_pct, 4, p.weight.count > 0) << " | "
       << (p.output_spec.empty() ? "float output" : p.output_spec) << " |\n";
  }
  md << "\n![SQNR per point](sqnr.svg)\n\n";

  md << "## Histograms\n\n"
     << "|x| of every quantized output of the float model on the analysed data (log counts), "
        "with the represented range of its grid: values beyond t saturate.\n\n"
     << "| point | max abs | t- | t+ | clipped % | histogram |\n|---|---:|---:|---:|---:|---|\n";
  for (const auto& p : a.points) {
    if (p.output_spec.empty() || !p.histogram.counts.defined() || p.histogram.bins() == 0 ||
        p.histogram.range <= 0.0) {
      continue;
    }
    util::HistogramPlot plot;
    plot.title = display(p.name) + ": |x| of the float output";
    plot.x_label = "|x|";
    const at::Tensor counts = p.histogram.counts.to(at::kDouble).contiguous();
    plot.counts.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + counts.numel());
    plot.lo = 0.0;
    plot.hi = p.histogram.range;
    plot.log_y = true;
    plot.markers.push_back({p.range_hi, "t+"});
    if (p.range_lo < 0.0 && -p.range_lo != p.range_hi) plot.markers.push_back({-p.range_lo, "t-"});
    const std::string file = "histograms/" + file_stem(p.name) + ".svg";
    util::save_svg(dir + "/" + file, util::render_histogram(plot));
    md << "| `" << display(p.name) << "` | " << general(p.histogram.max_abs) << " | "
       << general(-p.range_lo) << " | " << general(p.range_hi) << " | " << fixed(p.clipped_pct, 4)
       << " | ![" << display(p.name) << "](" << file << ") |\n";
  }
  util::write_file_atomic(dir + "/report.md", md.str());
}

}  // namespace analysis
}  // namespace calq
