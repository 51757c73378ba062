#pragma once
// The calq subcommands. Each returns the process exit code.

#include <string>

#include "config.h"

namespace calq {
namespace cli {

int train_command(const RunConfig& config);
int calibrate_command(const RunConfig& config, const std::string& observer,
                      const std::string& qconfig_file);
/// With `versus`, also evaluates that model and prints the paired comparison (versus - checkpoint).
int evaluate_command(const RunConfig& config, const std::string& checkpoint,
                     const std::string& versus = "");
int qat_command(const RunConfig& config, const std::string& method, const std::string& calibrated,
                const std::string& qconfig_file);
int export_command(const std::string& checkpoint, const std::string& json_path);
int check_command(const RunConfig& config, const std::string& qconfig_file);
/// The whole seed workflow; writes OUT/results.json and OUT/report.md.
int run_command(const RunConfig& config);

}  // namespace cli
}  // namespace calq
