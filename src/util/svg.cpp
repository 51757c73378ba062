#include "calq/util/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "calq/util/atomic_file.h"

namespace calq {
namespace util {
namespace {

constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759",
                                    "#76b7b2", "#edc948", "#b07aa1", "#9c755f"};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);
constexpr double kCharWidth = 7.0;  // approximate width of a 12 px sans-serif character

std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
}

// Coordinates with one decimal keep the files small and exact enough for the eye.
std::string px(double value) {
  return fixed(value, 1);
}

std::string short_number(double value) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.4g", value);
  return text;
}

// A 1-2-5 step giving about `target` intervals over [lo, hi].
double nice_step(double lo, double hi, int target) {
  const double raw = (hi - lo) / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double fraction = raw / magnitude;
  const double nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  return nice * magnitude;
}

std::vector<double> ticks(double lo, double hi, int target) {
  const double step = nice_step(lo, hi, target);
  std::vector<double> out;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    out.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return out;
}

std::string header(int width, int height) {
  std::ostringstream out;
  out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      << "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" << width
      << "\" height=\"" << height << "\" viewBox=\"0 0 " << width << " " << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height
      << "\" fill=\"white\"/>\n";
  return out.str();
}

std::string text(double x, double y, const std::string& content, const char* anchor = "start",
                 const std::string& extra = "") {
  return "<text x=\"" + px(x) + "\" y=\"" + px(y) + "\" text-anchor=\"" + anchor + "\"" + extra +
         ">" + escape(content) + "</text>\n";
}

std::string line(double x1, double y1, double x2, double y2, const std::string& style) {
  return "<line x1=\"" + px(x1) + "\" y1=\"" + px(y1) + "\" x2=\"" + px(x2) + "\" y2=\"" + px(y2) +
         "\" " + style + "/>\n";
}

}  // namespace

std::vector<PlotMarker> clipping_markers(double min, double max) {
  return {{min, "min = " + short_number(min)}, {max, "max = " + short_number(max)}};
}

std::string render_bar_chart(const BarChart& chart) {
  TORCH_CHECK(!chart.categories.empty() && !chart.series.empty(), "bar chart '", chart.title,
              "' needs at least one category and one series, got ", chart.categories.size(),
              " categories and ", chart.series.size(), " series");
  double data_min = std::numeric_limits<double>::infinity();
  double data_max = -std::numeric_limits<double>::infinity();
  size_t longest_label = 0;
  for (const auto& category : chart.categories) {
    longest_label = std::max(longest_label, category.size());
  }
  for (const auto& series : chart.series) {
    TORCH_CHECK(series.values.size() == chart.categories.size(), "bar chart series '", series.name,
                "' has ", series.values.size(), " values, expected one per category (",
                chart.categories.size(), ")");
    for (double v : series.values) {
      if (std::isnan(v)) continue;
      TORCH_CHECK(std::isfinite(v), "bar chart series '", series.name, "' holds ", v,
                  "; values must be finite or NaN (no bar)");
      data_min = std::min(data_min, v);
      data_max = std::max(data_max, v);
    }
  }
  const bool any = std::isfinite(data_max);
  const double lo =
      std::isnan(chart.value_min) ? std::min(0.0, any ? data_min : 0.0) : chart.value_min;
  double hi = chart.value_max;
  if (std::isnan(hi)) {
    hi = std::max(any ? data_max : 0.0, 0.0);
    if (hi <= lo) hi = lo + 1.0;
    const double step = nice_step(lo, hi, 5);
    hi = std::ceil(hi / step - 1e-9) * step;
  }
  TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo < hi, "bar chart '", chart.title,
              "' has an empty or infinite value range [", lo, ", ", hi, "]");

  const int num_series = static_cast<int>(chart.series.size());
  const double bar_height = 16.0;
  const double row_height = bar_height * num_series + 10.0;
  const double left = 16.0 + kCharWidth * static_cast<double>(longest_label);
  const double right = 16.0 + kCharWidth * (chart.decimals + 6);  // room for value labels
  const double top = chart.title.empty() ? 16.0 : 40.0;
  const double legend = num_series > 1 ? 20.0 : 0.0;
  const double plot_height = row_height * static_cast<double>(chart.categories.size());
  const double plot_width = std::max(100.0, chart.width - left - right);
  const int height = static_cast<int>(top + legend + plot_height + 50.0);
  const double plot_top = top + legend;
  const auto to_x = [&](double v) {
    return left + (std::clamp(v, lo, hi) - lo) / (hi - lo) * plot_width;
  };

  std::ostringstream out;
  out << header(chart.width, height);
  if (!chart.title.empty()) {
    out << text(chart.width / 2.0, 24.0, chart.title, "middle", " font-size=\"15\"");
  }
  // Legend.
  if (num_series > 1) {
    double x = left;
    for (int s = 0; s < num_series; ++s) {
      out << "<rect x=\"" << px(x) << "\" y=\"" << px(top)
          << "\" width=\"12\" height=\"12\" fill=\"" << kPalette[s % kPaletteSize] << "\"/>\n"
          << text(x + 16, top + 10, chart.series[s].name);
      x += 32 + kCharWidth * static_cast<double>(chart.series[s].name.size());
    }
  }
  // Grid and value axis.
  const double axis_y = plot_top + plot_height;
  for (double t : ticks(lo, hi, 5)) {
    const double x = to_x(t);
    out << line(x, plot_top, x, axis_y, "stroke=\"#dddddd\"")
        << line(x, axis_y, x, axis_y + 4, "stroke=\"black\"")
        << text(x, axis_y + 17, short_number(t), "middle");
  }
  out << line(left, axis_y, left + plot_width, axis_y, "stroke=\"black\"")
      << line(left, plot_top, left, axis_y, "stroke=\"black\"")
      << text(left + plot_width / 2, axis_y + 38, chart.value_label, "middle");
  // Rows.
  for (size_t c = 0; c < chart.categories.size(); ++c) {
    const double row_top = plot_top + row_height * static_cast<double>(c) + 5.0;
    out << text(left - 6, row_top + bar_height * num_series / 2.0 + 4, chart.categories[c], "end");
    for (int s = 0; s < num_series; ++s) {
      const double v = chart.series[s].values[c];
      const double y = row_top + bar_height * s;
      if (std::isnan(v)) {
        out << text(left + 4, y + bar_height - 4, "n/a", "start", " fill=\"#888888\"");
        continue;
      }
      const double end = to_x(v);
      out << "<rect x=\"" << px(left) << "\" y=\"" << px(y) << "\" width=\"" << px(end - left)
          << "\" height=\"" << px(bar_height - 2) << "\" fill=\"" << kPalette[s % kPaletteSize]
          << "\"><title>"
          << escape(chart.categories[c] + " " + chart.series[s].name + ": " +
                    fixed(v, chart.decimals))
          << "</title></rect>\n"
          << text(end + 4, y + bar_height - 5, fixed(v, chart.decimals));
    }
  }
  out << "</svg>\n";
  return out.str();
}

std::string render_histogram(const HistogramPlot& plot) {
  TORCH_CHECK(!plot.counts.empty(), "histogram '", plot.title, "' has no bins");
  TORCH_CHECK(std::isfinite(plot.lo) && std::isfinite(plot.hi) && plot.lo < plot.hi, "histogram '",
              plot.title, "' needs finite lo < hi, got [", plot.lo, ", ", plot.hi, "]");
  double max_count = 0.0;
  for (size_t i = 0; i < plot.counts.size(); ++i) {
    const double c = plot.counts[i];
    TORCH_CHECK(std::isfinite(c) && c >= 0, "histogram '", plot.title, "' bin ", i, " has count ",
                c, "; counts must be finite and >= 0");
    max_count = std::max(max_count, c);
  }
  double x_lo = plot.lo;
  double x_hi = plot.hi;
  for (const auto& marker : plot.markers) {
    TORCH_CHECK(std::isfinite(marker.x), "histogram marker '", marker.label, "' is at ", marker.x,
                "; markers must be finite");
    x_lo = std::min(x_lo, marker.x);
    x_hi = std::max(x_hi, marker.x);
  }
  const double margin = (x_hi - x_lo) * 0.02;
  if (x_lo < plot.lo) x_lo -= margin;
  if (x_hi > plot.hi) x_hi += margin;

  const auto height_of = [&](double c) { return plot.log_y ? std::log10(1.0 + c) : c; };
  double y_max = height_of(max_count);
  std::vector<double> y_ticks;
  if (plot.log_y) {
    for (double t = 1; height_of(t) <= y_max * (1 + 1e-12) || y_ticks.empty(); t *= 10) {
      y_ticks.push_back(t);
    }
    y_max = std::max(y_max, height_of(y_ticks.back()));
  } else {
    if (y_max <= 0) y_max = 1;
    y_ticks = ticks(0, y_max, 4);
    y_max = std::max(y_max, y_ticks.back());
  }

  const double left = 64.0;
  const double right = 16.0;
  const double top = plot.title.empty() ? 24.0 : 44.0;
  const double bottom = 48.0;
  const double plot_width = std::max(100.0, plot.width - left - right);
  const double plot_height = std::max(60.0, plot.height - top - bottom);
  const double base = top + plot_height;
  const auto to_x = [&](double v) { return left + (v - x_lo) / (x_hi - x_lo) * plot_width; };
  const auto to_y = [&](double c) { return base - height_of(c) / y_max * plot_height; };

  std::ostringstream out;
  out << header(plot.width, plot.height);
  if (!plot.title.empty()) {
    out << text(plot.width / 2.0, 24.0, plot.title, "middle", " font-size=\"15\"");
  }
  for (double t : y_ticks) {
    const double y = to_y(t);
    out << line(left, y, left + plot_width, y, "stroke=\"#eeeeee\"")
        << line(left - 4, y, left, y, "stroke=\"black\"")
        << text(left - 6, y + 4, short_number(t), "end");
  }
  for (double t : ticks(x_lo, x_hi, 6)) {
    const double x = to_x(t);
    out << line(x, base, x, base + 4, "stroke=\"black\"")
        << text(x, base + 17, short_number(t), "middle");
  }
  // The bins as one filled step outline: compact even for thousands of bins.
  const double bin_width = (plot.hi - plot.lo) / static_cast<double>(plot.counts.size());
  out << "<path fill=\"#4e79a7\" stroke=\"none\" d=\"M" << px(to_x(plot.lo)) << " " << px(base);
  for (size_t i = 0; i < plot.counts.size(); ++i) {
    const double y = to_y(plot.counts[i]);
    out << " L" << px(to_x(plot.lo + bin_width * i)) << " " << px(y) << " L"
        << px(to_x(plot.lo + bin_width * (i + 1))) << " " << px(y);
  }
  out << " L" << px(to_x(plot.hi)) << " " << px(base) << " Z\"/>\n";
  out << line(left, base, left + plot_width, base, "stroke=\"black\"")
      << line(left, top, left, base, "stroke=\"black\"")
      << text(left + plot_width / 2, base + 38, plot.x_label, "middle")
      << text(16, top + plot_height / 2, plot.log_y ? "count (log)" : "count", "middle",
              " transform=\"rotate(-90 16 " + px(top + plot_height / 2) + ")\"");
  for (size_t m = 0; m < plot.markers.size(); ++m) {
    const double x = to_x(plot.markers[m].x);
    // Alternate label heights so that two close markers stay readable.
    const double label_y = top - 4 + (m % 2 == 0 ? 0.0 : 14.0);
    const bool right_half = x > left + plot_width / 2;
    out << line(x, top, x, base, "stroke=\"#e15759\" stroke-width=\"1.5\" stroke-dasharray=\"5,3\"")
        << text(right_half ? x - 4 : x + 4, label_y + 12, plot.markers[m].label,
                right_half ? "end" : "start", " fill=\"#e15759\"");
  }
  out << "</svg>\n";
  return out.str();
}

void save_svg(const std::string& path, const std::string& svg) {
  write_file_atomic(path, svg);
}

}  // namespace util
}  // namespace calq
