#pragma once
// OUT/report.md of calq run: the results table, an accuracy plot, and per-layer activation
// histograms with the clipping range the best calibration chose.

#include <nlohmann/json.hpp>

#include <string>

#include "steps.h"

namespace calq {
namespace cli {

/// The results as an aligned text table (float, every observer, every method).
std::string summary_table(const nlohmann::json& results);

/// Writes OUT/report.md, OUT/accuracy.svg and OUT/histograms/<layer>.svg. The histograms are
/// collected on the calibration batches with a percentile observer per activation, and show
/// the range [-t, t] that `calibrated` uses at that layer.
void write_report(const Workspace& ws, const nlohmann::json& results, const Model& float_model,
                  const Model& calibrated);

}  // namespace cli
}  // namespace calq
