#pragma once
// "fixed_scale": a given scale, data ignored (semantics section 2).

#include "calq/observers/observer.h"

namespace calq {
namespace observers {

struct FixedScaleObserverOptions {
  /// The scale qparams() returns. Finite, > 0. Default 1.
  TORCH_ARG(double, scale) = 1.0;
};

/// qparams() returns exactly `scale` (float32 {1}) and zero_point 0, with or without data
/// (the spec's power_of_two is not applied: the scale is the user's). update() still checks
/// the data (non-finite values are errors) and counts batches. min_val / max_val hold the
/// equivalent symmetric range -+scale * (quant_max - quant_min) / 2 from construction on.
/// Per-tensor only.
class FixedScaleObserverImpl : public ObserverImpl {
 public:
  explicit FixedScaleObserverImpl(ObserverOptions common = {},
                                  FixedScaleObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

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
