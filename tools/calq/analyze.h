#pragma once
// `calq analyze`: where accuracy goes, per quantization point (calq::analysis::analyze).

#include <CLI/CLI.hpp>

#include <functional>

#include "config.h"

namespace calq {
namespace cli {

/// Registers the subcommand; `add_common` adds the usual model / data flags to it.
CLI::App* add_analyze_command(CLI::App& app, const std::function<void(CLI::App&)>& add_common);
/// Runs it (the flags given to add_analyze_command's subcommand, `config` for the rest).
int analyze_command(const RunConfig& config);

}  // namespace cli
}  // namespace calq
