// SVG charts: well-formed XML with the expected elements, escaping, errors.

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "calq/util/svg.h"

namespace {

// A small XML well-formedness check: tags balance, attributes are quoted, '&' only starts an
// entity, '<' only starts a tag. Returns "" when well-formed, else what is wrong. Hand-written
// scanner: std::regex recurses per character and overflows the stack on long path data.
bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == ':' || c == '_';
}

std::string xml_problem(const std::string& xml) {
  std::vector<std::string> open;
  size_t i = 0;
  if (xml.rfind("<?xml", 0) == 0) i = xml.find("?>") + 2;
  bool seen_root = false;
  const auto skip_space = [&] {
    while (i < xml.size() && std::isspace(static_cast<unsigned char>(xml[i]))) ++i;
  };
  const auto read_name = [&] {
    const size_t start = i;
    while (i < xml.size() && is_name_char(xml[i])) ++i;
    return xml.substr(start, i - start);
  };
  while (i < xml.size()) {
    const char c = xml[i];
    if (c == '&') {
      bool ok = false;
      for (const char* entity : {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"}) {
        ok = ok || xml.compare(i, std::strlen(entity), entity) == 0;
      }
      if (!ok) return "bare '&' at " + std::to_string(i);
      ++i;
    } else if (c == '>') {
      return "bare '>' at " + std::to_string(i);
    } else if (c != '<') {
      ++i;
    } else if (xml.compare(i, 2, "</") == 0) {
      i += 2;
      const std::string name = read_name();
      skip_space();
      if (i >= xml.size() || xml[i] != '>') return "malformed </" + name;
      if (open.empty() || open.back() != name) return "mismatched </" + name + ">";
      open.pop_back();
      ++i;
    } else {
      ++i;
      const std::string name = read_name();
      if (name.empty()) return "malformed tag at " + std::to_string(i);
      if (open.empty() && seen_root) return "second root element <" + name + ">";
      seen_root = true;
      for (;;) {
        skip_space();
        if (i >= xml.size()) return "unterminated <" + name + ">";
        if (xml[i] == '>' || xml.compare(i, 2, "/>") == 0) break;
        const std::string attribute = read_name();
        if (attribute.empty() || i >= xml.size() || xml[i] != '=' || i + 1 >= xml.size() ||
            xml[i + 1] != '"') {
          return "malformed attribute in <" + name + ">";
        }
        const size_t close = xml.find('"', i + 2);
        if (close == std::string::npos) return "unterminated attribute in <" + name + ">";
        if (xml.find('<', i + 2) < close) return "'<' in attribute of <" + name + ">";
        i = close + 1;
      }
      if (xml[i] == '>') {
        open.push_back(name);
        ++i;
      } else {
        i += 2;
      }
    }
  }
  if (!open.empty()) return "unclosed <" + open.back() + ">";
  return seen_root ? "" : "no root element";
}

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

TEST(Svg, CheckerRejectsBrokenXml) {
  EXPECT_EQ(xml_problem("<svg><g></g></svg>"), "");
  EXPECT_NE(xml_problem("<svg><g></svg>"), "");
  EXPECT_NE(xml_problem("<svg><text>a & b</text></svg>"), "");
  EXPECT_NE(xml_problem("<svg x=1></svg>"), "");
  EXPECT_NE(xml_problem("<svg></svg><svg></svg>"), "");
}

TEST(Svg, BarChartSingleSeries) {
  calq::util::BarChart chart;
  chart.title = "cnn <8/8> & friends";
  chart.categories = {"float", "min_max", "percentile"};
  chart.series = {{"top-1", {91.25, 90.5, std::nan("")}}};
  const std::string svg = calq::util::render_bar_chart(chart);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("cnn &lt;8/8&gt; &amp; friends"), std::string::npos);
  EXPECT_EQ(count(svg, "<rect"), 1 + 2);  // background + two bars (NaN has none)
  EXPECT_NE(svg.find(">91.25</text>"), std::string::npos);
  EXPECT_NE(svg.find(">90.50</text>"), std::string::npos);
  EXPECT_NE(svg.find(">n/a</text>"), std::string::npos);
  EXPECT_NE(svg.find(">percentile</text>"), std::string::npos);
  EXPECT_NE(svg.find(">top-1 accuracy (%)</text>"), std::string::npos);
  // Automatic axis 0..100 in steps of 20.
  for (const char* tick : {">0</text>", ">20</text>", ">100</text>"}) {
    EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  }
}

TEST(Svg, BarChartGroupedAndZoomed) {
  calq::util::BarChart chart;
  chart.categories = {"cnn", "resnet"};
  chart.series = {{"calq", {90.0, 91.0}}, {"pytorch", {89.5, 92.0}}};
  chart.value_min = 84;
  chart.value_max = 96;
  chart.decimals = 1;
  const std::string svg = calq::util::render_bar_chart(chart);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_EQ(count(svg, "<rect"), 1 + 2 + 4);  // background, legend swatches, bars
  EXPECT_NE(svg.find(">pytorch</text>"), std::string::npos);
  EXPECT_NE(svg.find(">89.5</text>"), std::string::npos);
  for (const char* tick : {">85</text>", ">90</text>", ">95</text>"}) {
    EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  }
  EXPECT_EQ(svg.find(">80</text>"), std::string::npos);
  // Bar widths are proportional to value - value_min: 92 - 84 = 8 against 90 - 84 = 6.
  std::smatch m;
  std::vector<double> widths;
  std::string rest = svg;
  static const std::regex bar(
      "<rect x=\"[0-9.]+\" y=\"[0-9.]+\" width=\"([0-9.]+)\" height=\"14.0\"");
  while (std::regex_search(rest, m, bar)) {
    widths.push_back(std::stod(m[1]));
    rest = m.suffix();
  }
  ASSERT_EQ(widths.size(), 4u);
  EXPECT_NEAR(widths[3] / widths[0], 8.0 / 6.0, 1e-2);
}

TEST(Svg, BarChartErrors) {
  calq::util::BarChart chart;
  chart.categories = {"a", "b"};
  chart.series = {{"s", {1.0}}};
  try {
    calq::util::render_bar_chart(chart);
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(
        std::string(e.what_without_backtrace()).find("has 1 values, expected one per category (2)"),
        std::string::npos);
  }
  chart.series = {{"s", {1.0, INFINITY}}};
  EXPECT_THROW(calq::util::render_bar_chart(chart), c10::Error);
  chart.series = {{"s", {1.0, 2.0}}};
  chart.value_min = 5;
  chart.value_max = 5;
  EXPECT_THROW(calq::util::render_bar_chart(chart), c10::Error);
  chart.value_min = -1;
  chart.value_max = NAN;
  EXPECT_NO_THROW(calq::util::render_bar_chart(chart));
  chart.value_min = NAN;
  chart.series = {{"s", {-1.0, -2.0}}};  // all values negative: automatic range [-2, 0]
  EXPECT_NE(calq::util::render_bar_chart(chart).find(">-2</text>"), std::string::npos);
  chart.value_min = 3;
  chart.value_max = 2;
  EXPECT_THROW(calq::util::render_bar_chart(chart), c10::Error);
  EXPECT_THROW(calq::util::render_bar_chart(calq::util::BarChart{}), c10::Error);
}

TEST(Svg, HistogramWithClippingRange) {
  calq::util::HistogramPlot plot;
  plot.title = "layer1.conv1 activation";
  plot.counts.resize(2048);
  for (size_t i = 0; i < plot.counts.size(); ++i) {
    plot.counts[i] = std::floor(1e5 * std::exp(-static_cast<double>(i) / 100.0));
  }
  plot.lo = 0;
  plot.hi = 8;
  plot.log_y = true;
  plot.markers = calq::util::clipping_markers(-2.5, 2.5);
  const std::string svg = calq::util::render_histogram(plot);
  EXPECT_EQ(xml_problem(svg), "") << svg.substr(0, 2000);
  EXPECT_EQ(count(svg, "<path"), 1);
  EXPECT_EQ(count(svg, " L"), 2 * 2048 + 1);
  EXPECT_EQ(count(svg, "stroke-dasharray"), 2);
  EXPECT_NE(svg.find(">min = -2.5</text>"), std::string::npos);
  EXPECT_NE(svg.find(">max = 2.5</text>"), std::string::npos);
  EXPECT_NE(svg.find(">count (log)</text>"), std::string::npos);
  for (const char* tick : {">1</text>", ">10</text>", ">1e+05</text>"}) {
    EXPECT_NE(svg.find(tick), std::string::npos) << tick;
  }
  // The x axis widened to show the marker at -2.5, left of the data.
  EXPECT_NE(svg.find(">-2</text>"), std::string::npos);
}

TEST(Svg, HistogramLinearAndErrors) {
  calq::util::HistogramPlot plot;
  plot.counts = {0, 3, 7, 2};
  plot.lo = -1;
  plot.hi = 1;
  const std::string svg = calq::util::render_histogram(plot);
  EXPECT_EQ(xml_problem(svg), "") << svg;
  EXPECT_NE(svg.find(">count</text>"), std::string::npos);
  plot.counts = {};
  EXPECT_THROW(calq::util::render_histogram(plot), c10::Error);
  plot.counts = {1, -1};
  EXPECT_THROW(calq::util::render_histogram(plot), c10::Error);
  plot.counts = {1, 1};
  plot.hi = -1;
  EXPECT_THROW(calq::util::render_histogram(plot), c10::Error);
}

TEST(Svg, SaveWritesTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_svg_test";
  std::filesystem::remove_all(dir);
  calq::util::HistogramPlot plot;
  plot.counts = {1, 2};
  const std::string svg = calq::util::render_histogram(plot);
  calq::util::save_svg((dir / "plots/h.svg").string(), svg);
  std::ifstream in(dir / "plots/h.svg");
  std::stringstream back;
  back << in.rdbuf();
  EXPECT_EQ(back.str(), svg);
  std::filesystem::remove_all(dir);
}

}  // namespace
