#pragma once
// "fixed_scale": a given scale (and zero point), data ignored (semantics section 2). Imported
// QDQ models (calq::onnx::import) get their file's scales and zero points through it.

#include <vector>

#include "calq/observers/observer.h"

namespace calq {
namespace observers {

struct FixedScaleObserverOptions {
  /// The scale qparams() returns for a per-tensor spec. Finite, > 0. Default 1.
  TORCH_ARG(double, scale) = 1.0;
  /// The zero point of a per-tensor spec, within [quant_min, quant_max]; non-zero only with
  /// an affine spec (symmetric false). Default 0.
  TORCH_ARG(int64_t, zero_point) = 0;
  /// Per-channel spec: one scale per channel (required; finite, > 0); `scale` is then unused.
  /// Default empty.
  TORCH_ARG(std::vector<double>, channel_scales) = {};
  /// Per-channel spec: one zero point per channel (empty: all 0), as `zero_point`.
  TORCH_ARG(std::vector<int64_t>, channel_zero_points) = {};
};

/// qparams() returns the configured scale(s) (float32 {1}, or {C} per channel) and zero
/// point(s), with or without data. With spec.power_of_two() (the bernoulli march computes
/// with power-of-two scales only) each scale is rounded up to a power of two and clamped to
/// [2^-14, 2^-1] like every observer's scale (power_of_two_scale); scale_clamped() says
/// whether the clamp applied. update() still checks the data (non-finite values are errors;
/// per channel, the channel count) and counts batches. min_val / max_val hold, from
/// construction on, the range compute_qparams maps to these qparams: -+scale * (quant_max -
/// quant_min) / 2 for a zero point 0, [(quant_min - z) s, (quant_max - z) s] otherwise.
///
/// kwargs (registry): "scale" a number (per tensor) or a list (per channel), "zero_point" an
/// integer or a list.
class FixedScaleObserverImpl : public ObserverImpl {
 public:
  explicit FixedScaleObserverImpl(ObserverOptions common = {},
                                  FixedScaleObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;
  /// The per-tensor scale qparams() returns (the configured one, or its power of two).
  double effective_scale() const;
  bool power_of_two_clamped() const override;

 protected:
  void update_impl(const Batch& batch) override {}
  void merge_impl(const ObserverImpl& other) override {}
  std::pair<at::Tensor, at::Tensor> qparams_impl() const override;
  bool needs_data() const override { return false; }

 private:
  /// The configured scales and zero points, one per channel ({1} per tensor).
  std::vector<double> scales() const;
  std::vector<int64_t> zero_points() const;

  FixedScaleObserverOptions fixed_options_;
};

}  // namespace observers
}  // namespace calq
