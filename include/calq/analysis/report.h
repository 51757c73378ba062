#pragma once
// The human side of an analysis: a markdown report with SVG charts (a per-point SQNR chart,
// the sensitivity ranking, histograms with the clipping thresholds) and a terminal table.

#include <string>

#include "calq/analysis/analyze.h"

namespace calq {
namespace analysis {

/// A fixed-width table: one row per point in execution order (own and accumulated SQNR,
/// cosine, max abs error, clipped %, sensitivity KL / top-1 disagreement, rank), then the
/// cost line (passes, samples, seconds).
std::string format_analysis_table(const Analysis& analysis);

/// Writes `dir`/report.md, `dir`/sqnr.svg, `dir`/sensitivity.svg and
/// `dir`/histograms/<point>.svg (points with an output quantizer and a histogram), every file
/// atomically; creates `dir`. `title` heads the report; `context` (markdown) follows it (what
/// was analysed, with which data and command).
void write_analysis_report(const Analysis& analysis, const std::string& dir,
                           const std::string& title, const std::string& context = "");

}  // namespace analysis
}  // namespace calq
