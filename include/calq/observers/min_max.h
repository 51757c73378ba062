#pragma once
// "min_max": running min/max of the data (semantics section 2).

#include "calq/observers/running_range.h"

namespace calq {
namespace observers {

struct MinMaxObserverOptions {
  /// v <- v + c * (cur - v) after the first batch. In [0, 1]. Default 0.01.
  TORCH_ARG(double, averaging_constant) = 0.01;
};

/// Running average (running_range.h) of each batch's min and max, per tensor or per channel
/// (spec.per_channel(), along spec.ch_axis()).
class MinMaxObserverImpl : public RunningRangeObserverImpl {
 public:
  explicit MinMaxObserverImpl(ObserverOptions common = {}, MinMaxObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  std::pair<at::Tensor, at::Tensor> batch_range(const Batch& batch) override;
};

}  // namespace observers
}  // namespace calq
