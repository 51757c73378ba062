#pragma once
// Shared base of the observers whose result is a running average of per-batch ranges
// (min_max, clip, clip_std, mse): semantics section 2's averaging rule and its exact merge.

#include "calq/observers/observer.h"

namespace calq {
namespace observers {

/// Each batch yields a range [cur_min, cur_max] (per tensor or per channel, from
/// batch_range()); the state follows
///   v <- cur                      for the first batch,
///   v <- v + c * (cur - v)        afterwards, c = averaging_constant in [0, 1],
/// so c = 0 freezes the first batch's range and c = 1 keeps the latest batch's range.
///
/// Merge. Feeding a's batches then b's n_b batches gives, by unrolling the recurrence,
///   v = v_b + (1 - c)^n_b * (v_a - first_b),
/// where first_b is b's first-batch range (buffers "first_min" / "first_max"). merge() applies
/// this closed form, so it equals sequential feeding up to float rounding (exactly for
/// c = 0 and c = 1), and the merged first range is a's.
class RunningRangeObserverImpl : public ObserverImpl {
 public:
  RunningRangeObserverImpl(std::string kind, ObserverOptions options, double averaging_constant);

  double averaging_constant() const { return averaging_constant_; }

 protected:
  /// The batch's own range, float32 {1} or {C}.
  virtual std::pair<at::Tensor, at::Tensor> batch_range(const Batch& batch) = 0;

  void update_impl(const Batch& batch) final;
  void merge_impl(const ObserverImpl& other) final;
  /// The adopted range becomes the first-batch range.
  void adopt_range_impl() final;

  double averaging_constant_;
  at::Tensor first_min_;
  at::Tensor first_max_;
};

}  // namespace observers
}  // namespace calq
