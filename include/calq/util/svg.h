#pragma once
// Minimal standalone SVG charts for reports: a horizontal (grouped) bar chart of accuracies
// and a histogram with the chosen clipping range marked. Output is plain SVG 1.1 text that
// browsers and image viewers open directly.

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace calq {
namespace util {

/// One series of a bar chart: one value per category (NaN = no bar, shown as "n/a").
struct BarSeries {
  std::string name;
  std::vector<double> values;
};

/// A horizontal bar chart: one row per category, one bar per series in each row, the value
/// written at the end of each bar, a value axis with ticks at the bottom, a legend when there
/// is more than one series.
///
///   calq::util::BarChart chart;
///   chart.title = "resnet, 8/8 bits";
///   chart.categories = {"float", "min_max", "percentile"};
///   chart.series = {{"top-1", {91.2, 90.8, 91.0}}};
struct BarChart {
  std::string title;
  /// Caption of the value axis.
  std::string value_label = "top-1 accuracy (%)";
  std::vector<std::string> categories;
  /// Each series must have exactly categories.size() values.
  std::vector<BarSeries> series;
  /// Value axis range; NaN (default) = automatic: from min(0, smallest value) to max(0, largest
  /// value) rounded up to a tick. Bars start at value_min, so a value_min near the smallest
  /// value zooms in on small differences; values outside the range are clamped to it.
  double value_min = std::numeric_limits<double>::quiet_NaN();
  double value_max = std::numeric_limits<double>::quiet_NaN();
  /// Digits after the decimal point of the value labels. Default 2.
  int decimals = 2;
  /// Width of the picture in pixels. Default 720.
  int width = 720;
};

/// A vertical line drawn over a histogram, e.g. one end of a clipping range.
struct PlotMarker {
  double x;
  std::string label;
};

/// Histogram of `counts.size()` equal bins spanning [lo, hi], with vertical marker lines. The
/// x axis widens to show markers outside [lo, hi].
struct HistogramPlot {
  std::string title;
  std::string x_label = "value";
  std::vector<double> counts;
  double lo = 0.0;
  double hi = 1.0;
  /// Log-scale y axis: heights log10(1 + count), ticks at 1, 10, 100, ...
  bool log_y = false;
  std::vector<PlotMarker> markers;
  int width = 720;
  int height = 360;
};

/// Markers for a clipping range: "min = ..." and "max = ..." at the two ends (a symmetric
/// range is clipping_markers(-t, t)).
std::vector<PlotMarker> clipping_markers(double min, double max);

/// SVG text of the chart. Throws c10::Error if a series has the wrong number of values, no
/// category is given, or the value range is empty or not finite.
std::string render_bar_chart(const BarChart& chart);

/// SVG text of the histogram. Throws c10::Error if counts is empty, holds a negative or
/// non-finite count, or lo >= hi.
std::string render_histogram(const HistogramPlot& plot);

/// Writes SVG text atomically (write_file_atomic), creating parent folders.
void save_svg(const std::string& path, const std::string& svg);

}  // namespace util
}  // namespace calq
