#pragma once
// Per-layer recipes on the command line (calq::analysis::Recipe): the target's unsigned grids,
// the --cle / --bias-correction steps, and calibration with those steps around it.

#include <string>
#include <vector>

#include "calq/analysis/recipe.h"
#include "steps.h"

namespace calq {
namespace cli {

/// `recipe` with the run's options added: unsigned activation grids on every output known to
/// be non-negative when --target accepts them, and the --cle (with --cle-relu6) and
/// --bias-correction steps.
analysis::Recipe with_run_options(const RunConfig& config, analysis::Recipe recipe);
/// The calibration recipe of `observer` (calibration_qconfig) with the run's options.
analysis::Recipe calibration_recipe(const RunConfig& config, const std::string& observer);

/// The calibration batches of `ws` (--calib-batches of --batch-size training examples, drawn
/// with --seed), held in memory: the recipe's steps pass over them several times.
std::vector<at::Tensor> calibration_images(const Workspace& ws);
/// The first `limit` validation examples (all with limit <= 0) in batches of --batch-size.
std::vector<at::Tensor> validation_images(const Workspace& ws, int64_t limit = 0);

/// Calibrates `model`, prepared with `recipe`, on the calibration batches with the recipe's
/// steps around calibration (analysis::apply_recipe) and says on stderr what the steps did.
analysis::RecipeApplication calibrate_with_recipe(const Workspace& ws, Model& model,
                                                  const analysis::Recipe& recipe);

}  // namespace cli
}  // namespace calq
