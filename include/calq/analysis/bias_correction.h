#pragma once
// Empirical bias correction (Nagel et al. 2019, section 4.2; AIMET's empirical variant):
// quantizing a layer's weight and its input shifts the expected value of its output,
// E[W_q x_q] != E[W x], and the shift passes through the following layers. Measured on
// calibration data, per output channel, before the layer's activation, and removed from the
// layer's bias. docs/analysis.md, section 7.

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "calq/analysis/points.h"

namespace calq {
namespace analysis {

/// What correct_bias did.
struct BiasCorrectionReport {
  /// Layers corrected, in execution order, with the largest |shift| removed relative to the
  /// layer's output standard deviation: "conv1: max |shift| 0.012 (0.8 % of std)".
  std::vector<std::string> corrected;
  /// Weighted layers left alone and why (no quantizer, no bias to hold the correction).
  std::vector<std::string> skipped;
  /// Forward passes over the batches: 1 float + one per corrected layer.
  int64_t passes = 0;
  double seconds = 0.0;
  std::string str() const;
};

/// Corrects, in execution order, the bias of every weighted layer (Conv2d / Conv-BN blocks,
/// Linear / LinearReLU) of a prepared, calibrated model that has a weight quantizer or a
/// quantized input. For layer L with float input x and weight W (the float model: every
/// quantizer FLOAT) and quantized input x_q and weight W_q (every quantizer VALIDATION, the
/// layers before L already corrected), the per-channel shift
///     d_c = mean over the batches (and positions) of (W_q x_q)_c - (W x)_c
/// (pre-activation, bias included on both sides) is subtracted from L's bias (from the
/// batch-norm beta of a Conv-BN block, so folded and training forwards agree). Float means
/// are taken once, before any correction: they are the original model's. Layers without a
/// bias (Conv2d with bias=false and no batch norm) are skipped and reported. The model's float
/// function changes (its biases); its scales do not. Leaves the model in VALIDATION.
BiasCorrectionReport correct_bias(torch::nn::Module& model, const Forward& forward,
                                  const std::vector<at::Tensor>& batches);

}  // namespace analysis
}  // namespace calq
