#pragma once
// Where accuracy goes: per quantization point, the error it makes on its own, the error that
// has accumulated when every point is quantized, and how much the model output moves with
// only this point quantized or with only this point left float (docs/analysis.md, section 3).

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "calq/analysis/metrics.h"
#include "calq/analysis/points.h"
#include "calq/observers/histogram.h"

namespace calq {
namespace analysis {

struct AnalyzeOptions {
  /// Run the 2N sensitivity passes (only this point quantized / only this point float). With
  /// false only the float and the all-quantized passes run (the accumulated error, weight
  /// statistics); the "own" figures need the sensitivity passes. Default true.
  TORCH_ARG(bool, sensitivity) = true;
  /// Collect a histogram of |x| of every point's float output (for the report). Default true.
  TORCH_ARG(bool, histograms) = true;
  /// Bins of those histograms (a power of two >= 2). Default 512.
  TORCH_ARG(int64_t, histogram_bins) = 512;
};

/// The figures of one quantization point. Outputs are compared with the same point's output
/// in the float model on the same input batch.
struct PointAnalysis {
  std::string name;
  std::string type;
  std::string weight_spec;  ///< QuantSpec::str() of the weight quantizer, "" if none
  std::string output_spec;  ///< of the output quantizer, "" if the output stays float

  /// Only this point quantized (its weight and output quantizers in VALIDATION, every other
  /// point float): its own error. Needs the sensitivity passes.
  Similarity own;
  /// Every point quantized: the error accumulated up to and including this point.
  Similarity accumulated;
  /// From the same "only this point" pass, split at its output quantizer (points with both
  /// quantizers): weight_only compares the float output with the output computed from the
  /// quantized weight before the output quantizer; activation_only compares that tensor with
  /// the quantizer's result (the output quantization's own error).
  Similarity weight_only;
  Similarity activation_only;
  /// The quantized weight against the float weight (as the layer uses it, BN folded).
  Similarity weight;
  /// Percent of the output quantizer's inputs it saturates (in the "only this point" pass),
  /// and of the weight values.
  double clipped_pct = 0.0;
  double weight_clipped_pct = 0.0;
  /// The output grid: scale and the represented range [lo, hi] (0 if no output quantizer).
  double scale = 0.0, range_lo = 0.0, range_hi = 0.0;

  /// Model output with only this point quantized / with every point but this one quantized,
  /// against the float model's output.
  OutputDivergence only_quantized;
  OutputDivergence only_float;
  /// 1 = the most sensitive point (largest only_quantized.divergence()); 0 without the
  /// sensitivity passes.
  int64_t sensitivity_rank = 0;

  /// |x| of the float output over the data (empty counts without histograms or output).
  observers::AbsHistogram histogram;
};

/// A whole analysis.
struct Analysis {
  std::vector<PointAnalysis> points;  ///< in execution order
  /// Every point quantized against float: the model's total error.
  OutputDivergence all_quantized;
  /// Forward passes over the data (each over every batch), and their count per batch:
  /// 2 + 2N with the sensitivity passes (N points), 2 without.
  int64_t passes = 0;
  int64_t samples = 0;
  int64_t batches = 0;
  double seconds = 0.0;

  /// Indices into points, most sensitive first (by only_quantized.divergence(); ties by
  /// name). Empty without the sensitivity passes.
  std::vector<size_t> ranking() const;
  /// {"points": [{"name", "type", "sqnr_db", "cosine", "max_abs_err", "clipped_pct",
  ///   "sensitivity_kl", "sensitivity_top1", ...}], "model": {...}, "cost": {...}}
  /// (docs/analysis.md lists every key). Infinite SQNRs are written as null.
  nlohmann::json to_json() const;
};

/// Analyses a prepared, calibrated model (every quantizer must have a scale) on `batches`
/// (model inputs; a bounded subset: the cost is 2N + 2 passes over them). For every batch:
/// one float pass (every quantizer FLOAT), one all-quantized pass (VALIDATION), and for every
/// point P one pass with only P quantized and one with only P float. Quantizers' observers
/// never update (FLOAT and VALIDATION), so the calibration is unchanged. Leaves the model in
/// VALIDATION. Throws on an empty batch list.
Analysis analyze(torch::nn::Module& model, const Forward& forward,
                 const std::vector<at::Tensor>& batches, const AnalyzeOptions& options = {});

}  // namespace analysis
}  // namespace calq
