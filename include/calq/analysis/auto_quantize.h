#pragma once
// The automatic recipe for ONNX users in one call (`calq quantize --observer auto`,
// docs/deploy.md "quantize_onnx"): import a float ONNX model, search its per-layer recipe
// (auto_recipe: observers per point, optional CLE / bias correction / int16 promotion) on
// samples of a calibration source, and write the chosen model as QDQ ONNX.
//
// Unlike quantize_onnx, which streams, the search calibrates every candidate on the same
// batches, so it holds the samples it reads in memory: at most `max_samples` of them.
#include <torch/arg.h>

#include <string>

#include "calq/analysis/auto_recipe.h"
#include "calq/deploy/quantize.h"

namespace calq {
namespace analysis {

struct AutoQuantizeOptions {
  /// The search. Its unsigned_activations is replaced by the export profile's (ORT: uint8 is
  /// accepted, so outputs known non-negative get unsigned grids).
  TORCH_ARG(AutoOptions, search) = {};
  /// Samples read from each source and held in memory (0: every sample). Default 1024.
  TORCH_ARG(int64_t, max_samples) = 1024;
  /// Without a held-out source: the fraction of the calibration batches read that is held out
  /// (every 1/f-th batch, spread over the file; at least one batch each way). Held-out
  /// batches choose among whole-model candidates and measure a target drop; they are never
  /// calibrated on. Default 0.25.
  TORCH_ARG(double, held_out_fraction) = 0.25;
};

struct AutoQuantizeReport {
  /// samples / batches: those the chosen model was calibrated on; calibration_seconds: the
  /// whole search.
  deploy::QuantizeReport quantize;
  int64_t held_out_samples = 0, held_out_batches = 0;
  AutoResult search;
  std::string str(const deploy::Profile& profile) const;
};

/// Imports `input_path` (import_for_quantization), reads up to max_samples samples from
/// `calibration` (each checked against the model's input), takes the held-out batches from
/// `held_out` (up to max_samples; a choice on a few hundred samples is mostly noise, so give
/// one when there is more data) or else splits them off the calibration batches,
/// runs auto_recipe with `options`' grid (its observer is ignored: the candidates are
/// auto_options.search().choices(); its dtypes, qconfig file, march, exclude and float
/// outputs apply to every candidate) and exports the chosen model to `output_path`.
/// Without a held-out source, fewer than two batches (nothing to hold out) throw, naming the
/// counts; an empty held-out source throws too.
AutoQuantizeReport auto_quantize_onnx(const std::string& input_path,
                                      deploy::CalibrationSource& calibration,
                                      const std::string& output_path,
                                      const deploy::QuantizeOptions& options = {},
                                      const AutoQuantizeOptions& auto_options = {},
                                      deploy::CalibrationSource* held_out = nullptr);

}  // namespace analysis
}  // namespace calq
