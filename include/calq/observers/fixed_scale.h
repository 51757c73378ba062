#pragma once
// "fixed_scale": a given scale, data ignored (semantics section 2).

#include "calq/observers/observer.h"

namespace calq {
namespace observers {

struct FixedScaleObserverOptions {
  /// The scale qparams() returns. Finite, > 0. Default 1.
  TORCH_ARG(double, scale) = 1.0;
};

/// qparams() returns `scale` (float32 {1}) and zero_point 0, with or without data. With
/// spec.power_of_two() (the bernoulli march computes with power-of-two scales only) the scale
/// is rounded up to a power of two and clamped to [2^-14, 2^-1] like every observer's scale
/// (power_of_two_scale); scale_clamped() says whether the clamp applied. update() still checks
/// the data (non-finite values are errors) and counts batches. min_val / max_val hold the
/// equivalent symmetric range -+scale * (quant_max - quant_min) / 2 from construction on.
/// Per-tensor only.
class FixedScaleObserverImpl : public ObserverImpl {
 public:
  explicit FixedScaleObserverImpl(ObserverOptions common = {},
                                  FixedScaleObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;
  /// The scale qparams() returns (the configured one, or its power of two).
  double effective_scale() const;
  bool power_of_two_clamped() const override;

 protected:
  void update_impl(const Batch& batch) override {}
  void merge_impl(const ObserverImpl& other) override {}
  std::pair<at::Tensor, at::Tensor> qparams_impl() const override;
  bool needs_data() const override { return false; }

 private:
  FixedScaleObserverOptions fixed_options_;
};

}  // namespace observers
}  // namespace calq
