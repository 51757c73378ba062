#pragma once
// "clip": running min/max clamped to [xmin, xmax] (semantics section 2).

#include "calq/observers/running_range.h"

namespace calq {
namespace observers {

struct ClipObserverOptions {
  /// Lower clamp of the range. Finite, <= xmax. Default -1.
  TORCH_ARG(double, xmin) = -1.0;
  /// Upper clamp of the range. Finite, >= xmin. Default 1.
  TORCH_ARG(double, xmax) = 1.0;
  /// v <- v + c * (cur - v) after the first batch. In [0, 1]. Default 1 (latest batch).
  TORCH_ARG(double, averaging_constant) = 1.0;
};

/// Each batch's min and max are clamped to [xmin, xmax] before the running average
/// (running_range.h), so the state never leaves [xmin, xmax]. Per tensor or per channel.
class ClipObserverImpl : public RunningRangeObserverImpl {
 public:
  explicit ClipObserverImpl(ObserverOptions common = {}, ClipObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  std::pair<at::Tensor, at::Tensor> batch_range(const Batch& batch) override;

 private:
  ClipObserverOptions clip_options_;
};

}  // namespace observers
}  // namespace calq
