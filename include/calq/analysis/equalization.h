#pragma once
// Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1): for
// two consecutive weighted layers y = W2 f(W1 x + b1) with f positively homogeneous
// (identity, ReLU), f(x / s) = f(x) / s for s > 0, so output channel c of the first layer can
// be divided by s_c and input channel c of the second multiplied by s_c without changing the
// float function. s_c = sqrt(r1_c / r2_c) gives both the same range sqrt(r1_c r2_c)
// (r1_c: max |W1[c, ...]|, r2_c: max |W2[:, c, ...]|, both BN-folded): the per-channel weight
// ranges match, which is what a per-tensor grid (and a per-tensor activation between them)
// needs. docs/analysis.md, section 6.

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "calq/analysis/points.h"

namespace calq {
namespace analysis {

/// ReLU6 does not commute with a scale (relu6(x / s) != relu6(x) / s where x > 6 min(1, s)).
enum class Relu6Policy {
  keep,     ///< pairs through a ReLU6 are skipped (reported); the float model is unchanged
  to_relu,  ///< the ReLU6 becomes a ReLU first (as AIMET's equalization does): the float
            ///< model changes wherever a pre-activation exceeded 6; measure it
};
Relu6Policy relu6_policy_from_string(const std::string& name);  ///< "keep" | "to_relu"
std::string to_string(Relu6Policy policy);

struct EqualizationOptions {
  /// Default keep.
  TORCH_ARG(Relu6Policy, relu6) = Relu6Policy::keep;
  /// Sweeps over all pairs (a layer in two pairs, as the middle of a chain, moves with both):
  /// stop after this many, or earlier when no scale moved by more than `tolerance`.
  /// Default 20.
  TORCH_ARG(int64_t, max_sweeps) = 20;
  /// Default 1e-4 (relative change of a scale).
  TORCH_ARG(double, tolerance) = 1e-4;
  /// Scales are clamped to [1 / max_scale, max_scale] so that a dead channel (range 0 on one
  /// side) cannot blow up the other. Default 1e4.
  TORCH_ARG(double, max_scale) = 1e4;

 public:
  bool operator==(const EqualizationOptions& other) const;
};

/// What equalize did.
struct EqualizationReport {
  /// "first -> second" (with the pass-through modules between them, if any).
  std::vector<std::string> pairs;
  /// "first -> second: why" for consecutive weighted layers that could not be equalized.
  std::vector<std::string> skipped;
  /// Blocks whose ReLU6 became a ReLU (Relu6Policy::to_relu).
  std::vector<std::string> relu6_replaced;
  int64_t sweeps = 0;
  /// Range of the total scales applied (1 when nothing was equalized).
  double min_scale = 1.0, max_scale = 1.0;
  std::string str() const;
};

/// Equalizes every pair of consecutive weighted calq::nn layers (Conv2d / Conv-BN blocks of
/// any groups, Linear / LinearReLU) of `model` in place. The pairs come from one traced
/// forward of `example` (calq::trace; hand-written models and imported graphs alike): the
/// first layer's output must be read by the second only (through MaxPool2d, AvgPool2d,
/// AdaptiveAvgPool2d, Identity or Flatten, each read once), and the first layer's activation
/// must be none or ReLU (ReLU6 per `options.relu6`). Conv-BN blocks are scaled through their
/// batch-norm gamma and beta, other layers through weight and bias, so folded and unfolded,
/// float and QAT forwards all stay equivalent. Run it before prepare's quantizers have seen
/// data (on a float or freshly prepared model): the weights change.
EqualizationReport equalize(torch::nn::Module& model, const Forward& forward,
                            const at::Tensor& example, const EqualizationOptions& options = {});

/// Only the ReLU6 -> ReLU replacement that equalize(to_relu) makes, without scaling: rebuilds
/// the architecture of an equalized model before its saved state is loaded. Returns the
/// blocks changed.
std::vector<std::string> replace_relu6_for_equalization(torch::nn::Module& model,
                                                        const Forward& forward,
                                                        const at::Tensor& example);

}  // namespace analysis
}  // namespace calq
