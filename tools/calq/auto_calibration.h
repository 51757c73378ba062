#pragma once
// `--observer auto` on the command line: calq::analysis::auto_recipe with the CLI's model,
// the calibration batches and the validation split.

#include <vector>

#include "calq/analysis/auto_recipe.h"
#include "steps.h"

namespace calq {
namespace cli {

struct AutoCalibration {
  Model model;  ///< calibrated with the chosen recipe, VALIDATION
  ModelMeta meta;
  analysis::AutoResult result;
};

/// Searches the automatic recipe (analysis::auto_recipe) for the --bits grid: candidates
/// calibrated on the calibration batches, chosen on the validation split. `labelled`: choose
/// by top-1 against the validation labels (what calq run uses for every choice), agreement
/// and KL breaking ties; otherwise label-free (top-1 agreement with the float model, then KL).
/// --cle and --bias-correction let it try those steps, --target-drop promotes points
/// (--promotion), --target decides whether unsigned grids are allowed.
AutoCalibration auto_calibrate(const Workspace& ws, const Model& float_model, bool labelled);

}  // namespace cli
}  // namespace calq
