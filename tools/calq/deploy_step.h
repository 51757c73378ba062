#pragma once
// calq run's deployment step: export a prepared model as QDQ ONNX, run it with ONNX Runtime and
// with the integer engine, and compare both with the simulation.

#include <nlohmann/json.hpp>

#include <string>

#include "steps.h"

namespace calq {
namespace cli {

/// Exports `model` (prepared; calibrated or trained) to `onnx_path` and returns
/// {"sim_top1", "ort_top1", "int_top1", "argmax_agree", "within_1_lsb", "max_lsb_diff",
///  "export": {...}} on the test set (the validation set without test data), top-1 against
/// the labels or, without labels, against `float_model`. ONNX Runtime missing is reported in
/// the entry ("ort_error"), not an error.
nlohmann::json deploy_and_check(const Workspace& ws, const Model& model, const Model& float_model,
                                const std::string& onnx_path, nlohmann::json* runtime);

}  // namespace cli
}  // namespace calq
