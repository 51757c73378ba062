#pragma once
// The calq subcommands. Each returns the process exit code.

#include <string>

#include "config.h"

namespace calq {
namespace cli {

int train_command(const RunConfig& config);
int calibrate_command(const RunConfig& config, const std::string& observer,
                      const std::string& qconfig_file);
/// `versus`: a second saved model, compared image by image on the same set (paired).
int evaluate_command(const RunConfig& config, const std::string& checkpoint,
                     const std::string& versus = "");
int qat_command(const RunConfig& config, const std::string& method, const std::string& calibrated,
                const std::string& qconfig_file);
/// Writes the scales as JSON (`json_path`) and/or the model as QDQ ONNX (`onnx_path`).
int export_command(const std::string& checkpoint, const std::string& json_path,
                   const std::string& onnx_path);
/// Runs a model on a float32 .npy batch and writes its first output (.npy) or every output
/// by name (.npz): an ONNX file in float, or a calq checkpoint (zoo or imported) in
/// VALIDATION; engine "sim" (calq's simulation), "int" (the integer engine, requantization
/// "float" or "fixed") or "ort" (ONNX Runtime on the QDQ export).
int infer_command(const RunConfig& config, const std::string& model, const std::string& checkpoint,
                  const std::string& input, const std::string& output, const std::string& engine,
                  const std::string& requantization);
int check_command(const RunConfig& config, const std::string& qconfig_file);
/// The whole seed workflow; writes OUT/results.json and OUT/report.md.
int run_command(const RunConfig& config);

}  // namespace cli
}  // namespace calq
